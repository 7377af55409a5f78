"""Response schemas of an org's pending invitations (``/api/orgs/{id}/invitations``), as its
admins see them. The invitee's email is not part of them: it is shown only once they join."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from control_api.schemas.enums import Role


class OrgInvitationOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    username: str = Field(description="The invited username (they join once they accept). "
                                      "No user id: whether the username names a user is not "
                                      "shown, so the list cannot enumerate usernames.")
    role: Role
    invited_by: str | None = Field(description="Username of who invited them (null: that "
                                               "user was deleted).")
    created_at: datetime


class OrgInvitationList(BaseModel):
    items: list[OrgInvitationOut]
