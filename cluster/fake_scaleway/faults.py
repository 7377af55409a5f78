"""Fault injection for the fake Scaleway API.

A fault is armed over HTTP (``POST /_fake/faults``) for one operation (``create_server``,
``list_servers``, ``poweron``, ... or ``*``), optionally only in one zone or for one instance type,
for ``count`` calls (``-1``: until cleared). Each armed fault fires once per matching call.

Kinds, by when they act:
- before the handler (the call has no effect): ``server_error`` (5xx JSON), ``html_502``,
  ``quota`` (``quotas_exceeded``), ``quota_legacy`` (403 "Quota exceeded for this resource."),
  ``out_of_stock``, ``transient_state``, ``locked``, ``permissions_denied``,
  ``denied_authentication``, ``invalid_arguments``, ``precondition_failed``, ``not_found``;
- around the handler: ``slow`` (sleeps ``delay_s`` then answers normally; the effect happens
  even if the client gave up), ``lost_response`` (the effect happens, then a 504 HTML page),
  ``lost_response_drop`` (the effect happens, then the connection is closed mid-body);
- inside the boot logic (op ``poweron``): ``boot_stuck`` (stays ``starting`` forever),
  ``boot_fallback`` (goes back to ``stopped`` instead of ``running``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

PRE_KINDS = frozenset({
    "server_error", "html_502", "quota", "quota_legacy", "out_of_stock", "transient_state",
    "locked", "permissions_denied", "denied_authentication", "invalid_arguments",
    "precondition_failed", "not_found",
})
AROUND_KINDS = frozenset({"slow", "lost_response", "lost_response_drop"})
BOOT_KINDS = frozenset({"boot_stuck", "boot_fallback"})
ALL_KINDS = PRE_KINDS | AROUND_KINDS | BOOT_KINDS

OPS = frozenset({
    "*", "create_server", "list_servers", "get_server", "delete_server", "update_server",
    "poweron", "poweroff", "terminate", "reboot", "set_user_data", "get_user_data",
    "list_user_data", "delete_user_data", "list_servers_types", "availability",
    "create_private_nic", "get_private_nic", "list_private_nics", "get_volume", "list_volumes",
    "delete_volume", "list_ips",
})


@dataclass
class Fault:
    """One armed fault."""

    op: str
    kind: str
    count: int = 1
    zone: str | None = None
    instance_type: str | None = None
    delay_s: float = 1.0
    status: int = 500
    fired: int = 0

    def matches(self, op: str, zone: str | None, instance_type: str | None) -> bool:
        if self.count == 0:
            return False
        if self.op not in ("*", op):
            return False
        if self.zone is not None and self.zone != zone:
            return False
        return self.instance_type is None or self.instance_type == instance_type

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """The armed faults, consumed in arming order. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def arm(self, fault: Fault) -> Fault:
        if fault.kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        if fault.op not in OPS:
            raise ValueError(f"unknown op {fault.op!r}")
        if fault.kind in BOOT_KINDS and fault.op != "poweron":
            raise ValueError(f"{fault.kind} only applies to op 'poweron'")
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, op: str, zone: str | None = None, instance_type: str | None = None,
             kinds: frozenset[str] = PRE_KINDS | AROUND_KINDS) -> Fault | None:
        """Consume one firing of the first armed fault matching this call, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(op, zone, instance_type):
                    if fault.count > 0:
                        fault.count -= 1
                    fault.fired += 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_json() for f in self._faults]


def error_body(kind: str, *, resource: str = "instance_server",
               resource_id: str | None = None, instance_type: str | None = None,
               status: int = 500) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a pre-handler fault, shaped like Scaleway's error bodies."""
    quota_resource = f"compute_servers_type_{(instance_type or 'unknown').replace('-', '_')}"
    bodies: dict[str, tuple[int, dict[str, Any]]] = {
        "server_error": (status, {"type": "internal_error", "message": "Internal server error"}),
        "quota": (403, {"type": "quotas_exceeded", "message": "Quota(s) exceeded",
                        "details": [{"resource": quota_resource, "quota": 0, "current": 0}]}),
        # The Instance API's older shape: an invalid_request_error whose message says it.
        "quota_legacy": (403, {"type": "invalid_request_error",
                               "message": "Quota exceeded for this resource.",
                               "resource": quota_resource}),
        "out_of_stock": (409, {"type": "out_of_stock", "message": "Out of stock",
                               "resource": instance_type or "instance_server"}),
        "transient_state": (409, {"type": "transient_state",
                                  "message": "resource is in a transient state",
                                  "resource": resource, "resource_id": resource_id,
                                  "current_state": "starting"}),
        "locked": (403, {"type": "locked", "message": "resource is locked",
                         "resource": resource, "resource_id": resource_id}),
        "permissions_denied": (403, {"type": "permissions_denied",
                                     "message": "insufficient permissions",
                                     "details": [{"resource": resource, "action": "write"}]}),
        "denied_authentication": (401, {"type": "denied_authentication",
                                        "message": "authentication is denied",
                                        "method": "api_key", "reason": "invalid_argument"}),
        "invalid_arguments": (400, {"type": "invalid_arguments", "message": "invalid argument(s)",
                                    "details": [{"argument_name": "commercial_type",
                                                 "reason": "constraint",
                                                 "help_message": "injected fault"}]}),
        "precondition_failed": (412, {"type": "precondition_failed",
                                      "message": "precondition failed",
                                      "precondition": "resource_still_in_use"}),
        "not_found": (404, {"type": "not_found", "message": "resource is not found",
                            "resource": resource, "resource_id": resource_id}),
    }
    return bodies[kind]


HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
HTML_504 = (
    "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    "<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n"
)
