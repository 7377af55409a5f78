"""Field types and bounds the schemas share.

The schemas are the wire format of the control API for the server and for its clients
(:mod:`control_api.client`), so nothing here may pull SQLAlchemy, argon2, JWT or FastAPI.
"""

from __future__ import annotations

from core.wire import UtcDatetime

__all__ = ["DEFAULT_LIMIT", "MAX_CURSOR_LENGTH", "MAX_LIMIT", "UtcDatetime"]

# Page sizes of the paginated lists.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# A real cursor is under 100 characters; refuse to decode anything far larger.
MAX_CURSOR_LENGTH = 256
