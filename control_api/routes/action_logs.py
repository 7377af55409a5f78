"""Routes under /api/action-logs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_api.deps import PrincipalDep, SessionDep, access
from control_api.schemas.action_logs import ActionLogList, ActionLogOut, ActionLogQuery
from control_api.services import action_logs as svc

router = APIRouter(prefix="/api/action-logs", tags=["action-logs"])


@router.get("", response_model=ActionLogList, openapi_extra=access("user"))
def search_action_logs(principal: PrincipalDep, db: SessionDep,
                       q: Annotated[ActionLogQuery, Query()]) -> ActionLogList:
    """Search the action logs, newest first, with counts per status over all matches.

    Platform admins see every log; others see the logs of their orgs and their own actions.
    """
    result = svc.search(db, principal, q.filters(), limit=q.limit, cursor=q.cursor)
    return ActionLogList(items=[ActionLogOut.of(a) for a in result.items],
                         next_cursor=result.next_cursor, counts=result.counts)
