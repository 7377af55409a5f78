"""The fake Scaleway HTTP API (Starlette): the Instance, Block and IPAM paths our adapter uses.

Every call is logged (``GET /_fake/calls``) with its operation name, zone, status and the fault
that fired, so tests can assert, for example, that a create was never sent twice. Admin endpoints
live under ``/_fake``: faults, clock, config, availability, quotas, seeding, reset.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cluster.fake_scaleway.faults import (
    AROUND_KINDS,
    HTML_502,
    HTML_504,
    PRE_KINDS,
    Fault,
    error_body,
)
from cluster.fake_scaleway.state import (
    ApiError,
    FakeState,
    GatewayNetwork,
    IpamIp,
    PrivateNetwork,
    PrivateNic,
    SecurityGroup,
    SecurityGroupRule,
    Server,
    Volume,
    region_of,
)

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 50


# ------------------------------------------------------------------------------ JSON shapes


def server_json(st: FakeState, s: Server) -> dict[str, Any]:
    """A server as the Instance API returns it."""
    volumes: dict[str, Any] = {}
    for idx, vid in enumerate(s.volume_ids):
        vol = st.volumes.get(vid)
        if vol is None or vol.server_id != s.id:
            continue
        volumes[str(idx)] = {
            "id": vol.id, "name": vol.name, "volume_type": vol.volume_type, "size": vol.size,
            "boot": vol.boot, "zone": vol.zone, "state": "in_use" if vol.volume_type ==
            "sbs_volume" else "available", "project": vol.project, "organization": vol.project,
            "server": {"id": s.id, "name": s.name}, "export_uri": None,
            "creation_date": st.iso(vol.created_at), "modification_date": st.iso(vol.created_at),
        }
    public_ips = []
    if s.public_ip:
        public_ips.append({"id": f"ip-{s.id}", "address": s.public_ip, "gateway": "62.210.0.1",
                           "netmask": "32", "family": "inet", "dynamic": True,
                           "provisioning_mode": "dhcp", "tags": [], "state": "attached"})
    allowed = {"stopped": ["poweron", "backup"], "running": ["poweroff", "terminate", "reboot",
               "stop_in_place", "backup"]}.get(s.state, [])
    return {
        "id": s.id, "name": s.name, "organization": s.project, "project": s.project,
        "allowed_actions": allowed, "tags": list(s.tags), "commercial_type": s.commercial_type,
        "creation_date": st.iso(s.created_at), "dynamic_ip_required": s.dynamic_ip_required,
        "routed_ip_enabled": s.routed_ip_enabled, "enable_ipv6": False,
        "hostname": s.name, "image": {"id": f"img-{s.image}", "name": s.image},
        "protected": False,
        # Deprecated and always null in routed-IP mode (the default), as on Scaleway.
        "private_ip": s.private_ip,
        "public_ip": public_ips[0] if public_ips else None, "public_ips": public_ips,
        "mac_address": "de:00:00:00:00:01", "modification_date": st.iso(s.modified_at),
        "state": s.state, "location": {"zone_id": s.zone} if s.state == "running" else None,
        "ipv6": None, "boot_type": "local", "volumes": volumes,
        "security_group": {"id": s.security_group or "sg-default", "name": "default"},
        "maintenances": [], "state_detail": s.state_detail, "arch": "x86_64",
        "placement_group": None,
        "private_nics": [nic_json(st, st.nics[n]) for n in s.nic_ids if n in st.nics],
        "zone": s.zone, "filesystems": [], "end_of_service": False,
    }


def nic_json(st: FakeState, nic: PrivateNic) -> dict[str, Any]:
    return {"id": nic.id, "server_id": nic.server_id, "private_network_id":
            nic.private_network_id, "mac_address": nic.mac_address, "state": st.nic_state(nic),
            "tags": [], "zone": nic.zone, "ipam_ip_ids": [nic.ip_id],
            "creation_date": st.iso(nic.created_at)}


def ip_json(st: FakeState, ip: IpamIp) -> dict[str, Any]:
    return {"id": ip.id, "address": ip.address, "project_id": ip.project, "is_ipv6": False,
            "tags": [], "reverses": [], "region": ip.region, "zone": ip.zone,
            "created_at": st.iso(ip.created_at), "updated_at": st.iso(ip.created_at),
            "source": {"private_network_id": ip.private_network_id},
            "resource": {"type": "instance_private_nic", "id": ip.nic_id,
                         "mac_address": ip.mac_address, "name": ip.name}}


def volume_json(st: FakeState, v: Volume) -> dict[str, Any]:
    refs = []
    if v.server_id:
        refs.append({"id": f"ref-{v.id}", "product_resource_type": "instance_server",
                     "product_resource_id": v.server_id, "type": "exclusive",
                     "status": "attached", "created_at": st.iso(v.created_at)})
    return {"id": v.id, "name": v.name, "type": "sbs_5k", "size": v.size,
            "project_id": v.project, "zone": v.zone, "references": refs,
            "status": "in_use" if v.server_id else "available", "tags": list(v.tags),
            "created_at": st.iso(v.created_at), "updated_at": st.iso(v.created_at),
            "parent_snapshot_id": None, "specs": {"perf_iops": 5000, "class": "sbs"},
            "last_detached_at": None}


def sg_rule_json(sg: SecurityGroup, r: SecurityGroupRule) -> dict[str, Any]:
    return {"id": r.id, "protocol": r.protocol, "direction": r.direction, "action": r.action,
            "ip_range": r.ip_range, "dest_port_from": r.dest_port_from,
            "dest_port_to": r.dest_port_to, "position": r.position, "editable": True,
            "zone": sg.zone}


def sg_json(st: FakeState, sg: SecurityGroup) -> dict[str, Any]:
    servers = [{"id": s.id, "name": s.name} for s in st.servers.values()
               if s.security_group == sg.id]
    return {"id": sg.id, "name": sg.name, "description": sg.description,
            "enable_default_security": True, "inbound_default_policy": sg.inbound_default_policy,
            "outbound_default_policy": sg.outbound_default_policy, "organization": sg.project,
            "project": sg.project, "tags": list(sg.tags), "editable": True,
            "organization_default": False, "project_default": False,
            "creation_date": st.iso(sg.created_at), "modification_date": st.iso(sg.created_at),
            "servers": servers, "stateful": sg.stateful, "state": "available", "zone": sg.zone}


def pn_json(st: FakeState, pn: PrivateNetwork) -> dict[str, Any]:
    return {"id": pn.id, "name": pn.name, "organization_id": pn.project,
            "project_id": pn.project, "region": pn.region, "tags": list(pn.tags),
            "created_at": st.iso(pn.created_at), "updated_at": st.iso(pn.created_at),
            "subnets": [{"id": f"{pn.id}-{i}", "subnet": sub, "created_at":
                         st.iso(pn.created_at), "updated_at": st.iso(pn.created_at),
                         "private_network_id": pn.id, "project_id": pn.project,
                         "vpc_id": "vpc-default"} for i, sub in enumerate(pn.subnets)],
            "vpc_id": "vpc-default", "dhcp_enabled": True, "default_route_propagation_enabled":
            False}


def gwn_json(st: FakeState, g: GatewayNetwork) -> dict[str, Any]:
    return {"id": g.id, "gateway_id": g.gateway_id, "private_network_id": g.private_network_id,
            "zone": g.zone, "masquerade_enabled": g.masquerade,
            "push_default_route": g.push_default_route, "status": "ready",
            "created_at": st.iso(g.created_at), "updated_at": st.iso(g.created_at),
            "ipam_config": None, "mac_address": None, "address": None}


# ------------------------------------------------------------------------------ helpers


def _page(request: Request, items: list[Any], size_param: str = "per_page"
          ) -> tuple[list[Any], int]:
    try:
        page = int(request.query_params.get("page") or 1)
        per_page = int(request.query_params.get(size_param) or DEFAULT_PER_PAGE)
    except ValueError as exc:
        raise ApiError(400, "invalid_arguments", "invalid argument(s)", details=[
            {"argument_name": "page", "reason": "constraint"}]) from exc
    if page < 1 or per_page < 1 or per_page > MAX_PER_PAGE:
        raise ApiError(400, "invalid_arguments", "invalid argument(s)", details=[
            {"argument_name": size_param, "reason": "constraint",
             "help_message": f"must be between 1 and {MAX_PER_PAGE}"}])
    start = (page - 1) * per_page
    return items[start:start + per_page], len(items)


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_request_error", "the request body is not JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request_error", "the request body must be an object")
    return body


class DroppedResponse(Response):
    """Starts a response, sends part of the body, then closes the connection (a lost response)."""

    def __init__(self) -> None:
        super().__init__(content=b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b'{"server": {"id": ',
                    "more_body": True})
        # Returning without completing the body makes the server close the connection.


# ------------------------------------------------------------------------------ app


def _admin(fn: Callable[[Request], Awaitable[Response]]
           ) -> Callable[[Request], Awaitable[Response]]:
    """Admin endpoints answer malformed input with a 400, never a 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as err:
            return JSONResponse(err.body, status_code=err.status)
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"type": "invalid_arguments", "message": repr(exc)},
                                status_code=400)

    return wrapped


def create_app(state: FakeState) -> Starlette:
    """Build the fake API around ``state``."""

    async def run(request: Request, op: str, zone: str | None,
                  handler: Callable[[], Response], *, instance_type: str | None = None,
                  resource_id: str | None = None) -> Response:
        entry: dict[str, Any] = {"method": request.method, "path": request.url.path, "op": op,
                                 "zone": zone, "query": dict(request.query_params),
                                 "fault": None}
        token = request.headers.get("x-auth-token")
        if not token or (state.config.secret_key and token != state.config.secret_key):
            entry["status"] = 401
            state.record_call(entry)
            return JSONResponse({"type": "denied_authentication",
                                 "message": "authentication is denied", "method": "api_key",
                                 "reason": "not_found"}, status_code=401)
        fault = state.faults.take(op, zone, instance_type)
        if fault is not None:
            entry["fault"] = fault.kind
        if fault is not None and fault.kind in PRE_KINDS:
            if fault.kind == "html_502":
                resp: Response = HTMLResponse(HTML_502, status_code=502)
            else:
                status, body = error_body(fault.kind, resource_id=resource_id,
                                          instance_type=instance_type, status=fault.status)
                resp = JSONResponse(body, status_code=status)
            entry["status"] = resp.status_code
            state.record_call(entry)
            return resp
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
        try:
            resp = handler()
        except ApiError as err:
            resp = JSONResponse(err.body, status_code=err.status)
        entry["status"] = resp.status_code
        if fault is not None and fault.kind in AROUND_KINDS - {"slow"}:
            # The effect happened; the answer never reaches the client intact.
            entry["effect_status"] = resp.status_code
            if fault.kind == "lost_response":
                resp = HTMLResponse(HTML_504, status_code=504)
                entry["status"] = 504
            else:
                resp = DroppedResponse()
                entry["status"] = "dropped"
        state.record_call(entry)
        return resp

    # -------------------------------------------------------------- instance: servers

    async def list_servers(request: Request) -> Response:
        zone = request.path_params["zone"]
        q = request.query_params

        def handler() -> Response:
            servers = state.list_servers(
                zone, tags=_split(q.get("tags")), project=q.get("project"), name=q.get("name"),
                state=q.get("state"), commercial_type=q.get("commercial_type"),
                ids=_split(q.get("servers")), order=q.get("order"))
            page, total = _page(request, servers)
            with state.lock:
                body = {"servers": [server_json(state, s) for s in page]}
            return JSONResponse(body, headers={"X-Total-Count": str(total)})

        return await run(request, "list_servers", zone, handler)

    async def create_server(request: Request) -> Response:
        zone = request.path_params["zone"]
        try:
            body = await _json_body(request)
        except ApiError as err:
            return JSONResponse(err.body, status_code=err.status)
        ctype = body.get("commercial_type") if isinstance(body.get("commercial_type"),
                                                          str) else None

        def handler() -> Response:
            s = state.create_server(zone, body)
            with state.lock:
                return JSONResponse({"server": server_json(state, s)}, status_code=201)

        return await run(request, "create_server", zone, handler, instance_type=ctype)

    async def get_server(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]

        def handler() -> Response:
            s = state.get_server(zone, sid)
            with state.lock:
                return JSONResponse({"server": server_json(state, s)})

        return await run(request, "get_server", zone, handler, resource_id=sid)

    async def delete_server(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]

        def handler() -> Response:
            state.delete_server(zone, sid)
            return Response(status_code=204)

        return await run(request, "delete_server", zone, handler, resource_id=sid)

    async def server_action(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]
        try:
            body = await _json_body(request)
        except ApiError as err:
            return JSONResponse(err.body, status_code=err.status)
        action = str(body.get("action") or "poweron")
        op = action if action in ("poweron", "poweroff", "terminate", "reboot") else "poweron"
        with state.lock:
            known = state.servers.get(sid)
            ctype = known.commercial_type if known else None

        def handler() -> Response:
            s = state.server_action(zone, sid, action)
            now = state.iso(state.clock.now())
            return JSONResponse({"task": {
                "id": f"task-{sid}-{action}", "description": f"server_{action}",
                "progress": 0, "status": "pending", "href_from": f"/servers/{sid}/action",
                "href_result": f"/servers/{s.id}", "zone": zone, "started_at": now,
                "terminated_at": None}}, status_code=202)

        return await run(request, op, zone, handler, instance_type=ctype, resource_id=sid)

    # -------------------------------------------------------------- instance: user data

    async def user_data_key(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]
        key = request.path_params["key"]
        if request.method == "PATCH":
            content = await request.body()

            def set_handler() -> Response:
                state.set_user_data(zone, sid, key, content)
                return Response(status_code=204)

            return await run(request, "set_user_data", zone, set_handler, resource_id=sid)
        if request.method == "DELETE":
            def del_handler() -> Response:
                state.delete_user_data(zone, sid, key)
                return Response(status_code=204)

            return await run(request, "delete_user_data", zone, del_handler, resource_id=sid)

        def get_handler() -> Response:
            data = state.get_user_data(zone, sid, key)
            return Response(data, media_type="text/plain")

        return await run(request, "get_user_data", zone, get_handler, resource_id=sid)

    async def list_user_data(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]

        def handler() -> Response:
            s = state.get_server(zone, sid)
            with state.lock:
                return JSONResponse({"user_data": sorted(s.user_data)})

        return await run(request, "list_user_data", zone, handler, resource_id=sid)

    # -------------------------------------------------------------- instance: private NICs

    async def private_nics(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]
        if request.method == "POST":
            try:
                body = await _json_body(request)
            except ApiError as err:
                return JSONResponse(err.body, status_code=err.status)

            def create_handler() -> Response:
                pn = body.get("private_network_id")
                if not isinstance(pn, str) or not pn:
                    raise ApiError(400, "invalid_arguments", "invalid argument(s)", details=[
                        {"argument_name": "private_network_id", "reason": "required"}])
                nic = state.create_private_nic(zone, sid, pn)
                with state.lock:
                    return JSONResponse({"private_nic": nic_json(state, nic)}, status_code=201)

            return await run(request, "create_private_nic", zone, create_handler,
                             resource_id=sid)

        def list_handler() -> Response:
            s = state.get_server(zone, sid)
            with state.lock:
                nics = [nic_json(state, state.nics[n]) for n in s.nic_ids if n in state.nics]
            return JSONResponse({"private_nics": nics, "total_count": len(nics)},
                                headers={"X-Total-Count": str(len(nics))})

        return await run(request, "list_private_nics", zone, list_handler, resource_id=sid)

    async def get_private_nic(request: Request) -> Response:
        zone, sid = request.path_params["zone"], request.path_params["server_id"]
        nid = request.path_params["nic_id"]

        def handler() -> Response:
            nic = state.get_private_nic(zone, sid, nid)
            with state.lock:
                return JSONResponse({"private_nic": nic_json(state, nic)})

        return await run(request, "get_private_nic", zone, handler, resource_id=nid)

    # -------------------------------------------------------------- instance: products

    async def products_servers(request: Request) -> Response:
        zone = request.path_params["zone"]

        def handler() -> Response:
            names = sorted(n for n, p in state.products.items() if zone in p.zones)
            page, total = _page(request, names)
            return JSONResponse({"servers": {n: state.products[n].to_json() for n in page}},
                                headers={"X-Total-Count": str(total)})

        return await run(request, "list_servers_types", zone, handler)

    async def availability(request: Request) -> Response:
        zone = request.path_params["zone"]

        def handler() -> Response:
            names = sorted(n for n, p in state.products.items() if zone in p.zones)
            page, total = _page(request, names)
            with state.lock:
                body = {n: {"availability": state.availability.get((zone, n), "available")}
                        for n in page}
            return JSONResponse({"servers": body}, headers={"X-Total-Count": str(total)})

        return await run(request, "availability", zone, handler)

    # -------------------------------------------------------------- block

    async def block_volumes(request: Request) -> Response:
        zone = request.path_params["zone"]
        q = request.query_params

        def handler() -> Response:
            vols = state.list_volumes(zone, name=q.get("name"),
                                      product_resource_id=q.get("product_resource_id"),
                                      tags=[t for v in q.getlist("tags") for t in _split(v)])
            page, total = _page(request, vols, size_param="page_size")
            with state.lock:
                return JSONResponse({"volumes": [volume_json(state, v) for v in page],
                                     "total_count": total})

        return await run(request, "list_volumes", zone, handler)

    async def block_volume(request: Request) -> Response:
        zone, vid = request.path_params["zone"], request.path_params["volume_id"]
        if request.method == "DELETE":
            def del_handler() -> Response:
                state.delete_volume(zone, vid)
                return Response(status_code=204)

            return await run(request, "delete_volume", zone, del_handler, resource_id=vid)
        if request.method == "PATCH":
            try:
                body = await _json_body(request)
            except ApiError as err:
                return JSONResponse(err.body, status_code=err.status)

            def patch_handler() -> Response:
                vol = state.update_volume(zone, vid, body)
                with state.lock:
                    return JSONResponse(volume_json(state, vol))

            return await run(request, "update_volume", zone, patch_handler, resource_id=vid)

        def get_handler() -> Response:
            vol = state.get_volume(zone, vid)
            with state.lock:
                return JSONResponse(volume_json(state, vol))

        return await run(request, "get_volume", zone, get_handler, resource_id=vid)

    # -------------------------------------------------------------- IPAM

    async def ipam_ips(request: Request) -> Response:
        region = request.path_params["region"]
        q = request.query_params

        def handler() -> Response:
            ips = state.list_ips(region, resource_id=q.get("resource_id"),
                                 private_network_id=q.get("private_network_id"))
            page, total = _page(request, ips, size_param="page_size")
            with state.lock:
                return JSONResponse({"ips": [ip_json(state, ip) for ip in page],
                                     "total_count": total})

        return await run(request, "list_ips", region, handler)

    # -------------------------------------------------------------- instance: security groups

    async def security_groups(request: Request) -> Response:
        zone = request.path_params["zone"]
        if request.method == "POST":
            try:
                body = await _json_body(request)
            except ApiError as err:
                return JSONResponse(err.body, status_code=err.status)

            def create_handler() -> Response:
                sg = state.create_security_group(zone, body)
                with state.lock:
                    return JSONResponse({"security_group": sg_json(state, sg)},
                                        status_code=201)

            return await run(request, "create_security_group", zone, create_handler)

        def list_handler() -> Response:
            with state.lock:
                groups = [g for g in state.security_groups.values() if g.zone == zone]
                name = request.query_params.get("name")
                if name:
                    groups = [g for g in groups if name in g.name]
                page, total = _page(request, groups)
                return JSONResponse({"security_groups": [sg_json(state, g) for g in page],
                                     "total_count": total},
                                    headers={"X-Total-Count": str(total)})

        return await run(request, "list_security_groups", zone, list_handler)

    async def security_group(request: Request) -> Response:
        zone, gid = request.path_params["zone"], request.path_params["sg_id"]
        if request.method == "DELETE":
            def del_handler() -> Response:
                state.delete_security_group(zone, gid)
                return Response(status_code=204)

            return await run(request, "delete_security_group", zone, del_handler,
                             resource_id=gid)

        def get_handler() -> Response:
            sg = state.get_security_group(zone, gid)
            with state.lock:
                return JSONResponse({"security_group": sg_json(state, sg)})

        return await run(request, "get_security_group", zone, get_handler, resource_id=gid)

    async def security_group_rules(request: Request) -> Response:
        zone, gid = request.path_params["zone"], request.path_params["sg_id"]
        if request.method == "POST":
            try:
                body = await _json_body(request)
            except ApiError as err:
                return JSONResponse(err.body, status_code=err.status)

            def create_handler() -> Response:
                rule = state.add_security_group_rule(zone, gid, body)
                sg = state.get_security_group(zone, gid)
                return JSONResponse({"rule": sg_rule_json(sg, rule)}, status_code=201)

            return await run(request, "create_security_group_rule", zone, create_handler,
                             resource_id=gid)

        def list_handler() -> Response:
            sg = state.get_security_group(zone, gid)
            with state.lock:
                rules = [sg_rule_json(sg, r) for r in sg.rules]
            return JSONResponse({"rules": rules, "total_count": len(rules)},
                                headers={"X-Total-Count": str(len(rules))})

        return await run(request, "list_security_group_rules", zone, list_handler,
                         resource_id=gid)

    async def security_group_rule(request: Request) -> Response:
        zone, gid = request.path_params["zone"], request.path_params["sg_id"]
        rid = request.path_params["rule_id"]

        def handler() -> Response:
            state.delete_security_group_rule(zone, gid, rid)
            return Response(status_code=204)

        return await run(request, "delete_security_group_rule", zone, handler, resource_id=rid)

    # -------------------------------------------------------------- VPC, Public Gateway

    async def private_networks(request: Request) -> Response:
        region = request.path_params["region"]
        if request.method == "POST":
            try:
                body = await _json_body(request)
            except ApiError as err:
                return JSONResponse(err.body, status_code=err.status)

            def create_handler() -> Response:
                pn = state.create_private_network(region, body)
                with state.lock:
                    return JSONResponse(pn_json(state, pn))

            return await run(request, "create_private_network", region, create_handler)

        def list_handler() -> Response:
            with state.lock:
                pns = [p for p in state.private_networks.values() if p.region == region]
                page, total = _page(request, pns, size_param="page_size")
                return JSONResponse({"private_networks": [pn_json(state, p) for p in page],
                                     "total_count": total})

        return await run(request, "list_private_networks", region, list_handler)

    async def private_network(request: Request) -> Response:
        region, pid = request.path_params["region"], request.path_params["pn_id"]
        if request.method == "DELETE":
            def del_handler() -> Response:
                state.delete_private_network(region, pid)
                return Response(status_code=204)

            return await run(request, "delete_private_network", region, del_handler,
                             resource_id=pid)

        def get_handler() -> Response:
            with state.lock:
                pn = state.private_networks.get(pid)
                if pn is None or pn.region != region:
                    raise ApiError(404, "not_found", "resource is not found",
                                   resource="private_network", resource_id=pid)
                return JSONResponse(pn_json(state, pn))

        return await run(request, "get_private_network", region, get_handler, resource_id=pid)

    async def gateway_networks(request: Request) -> Response:
        zone = request.path_params["zone"]
        if request.method == "POST":
            try:
                body = await _json_body(request)
            except ApiError as err:
                return JSONResponse(err.body, status_code=err.status)

            def create_handler() -> Response:
                gwn = state.attach_gateway(zone, body)
                with state.lock:
                    return JSONResponse(gwn_json(state, gwn))

            return await run(request, "create_gateway_network", zone, create_handler)

        def list_handler() -> Response:
            with state.lock:
                items = [g for g in state.gateway_networks.values() if g.zone == zone]
                return JSONResponse({"gateway_networks": [gwn_json(state, g) for g in items],
                                     "total_count": len(items)})

        return await run(request, "list_gateway_networks", zone, list_handler)

    # -------------------------------------------------------------- admin (/_fake)

    async def admin_boot(request: Request) -> Response:
        booter = state.booter
        describe = getattr(booter, "describe", None)
        if describe is None:
            return JSONResponse({"type": "not_booting",
                                 "message": "this fake does not boot servers (--boot)"},
                                status_code=404)
        return JSONResponse(describe())

    async def admin_faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.faults.clear()
            return Response(status_code=204)
        if request.method == "GET":
            return JSONResponse({"items": state.faults.list()})
        try:
            body = await _json_body(request)
            allowed = {"op", "kind", "count", "zone", "instance_type", "delay_s", "status"}
            unknown = set(body) - allowed
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}")
            fault = state.faults.arm(Fault(
                op=str(body.get("op", "*")), kind=str(body["kind"]),
                count=int(body.get("count", 1)), zone=body.get("zone"),
                instance_type=body.get("instance_type"),
                delay_s=float(body.get("delay_s", 1.0)), status=int(body.get("status", 500))))
        except (ApiError, KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"type": "invalid_arguments", "message": str(exc)},
                                status_code=400)
        return JSONResponse(fault.to_json(), status_code=201)

    async def admin_calls(request: Request) -> Response:
        if request.method == "DELETE":
            with state.lock:
                state.calls.clear()
            return Response(status_code=204)
        op = request.query_params.get("op")
        with state.lock:
            calls = [c for c in state.calls if op is None or c["op"] == op]
        return JSONResponse({"items": calls})

    async def admin_clock(request: Request) -> Response:
        if request.method == "POST":
            body = await _json_body(request)
            state.clock.advance(float(body.get("advance", 0)))
        return JSONResponse({"now": state.clock.now()})

    async def admin_config(request: Request) -> Response:
        if request.method == "POST":
            body = await _json_body(request)
            for key in ("boot_seconds", "stop_seconds", "nic_seconds"):
                if key in body:
                    setattr(state.config, key, float(body[key]))
        cfg = state.config
        return JSONResponse({"boot_seconds": cfg.boot_seconds, "stop_seconds": cfg.stop_seconds,
                             "nic_seconds": cfg.nic_seconds})

    async def admin_availability(request: Request) -> Response:
        body = await _json_body(request)
        value = str(body.get("availability", "available"))
        if value not in ("available", "scarce", "shortage"):
            return JSONResponse({"type": "invalid_arguments", "message": "bad availability"},
                                status_code=400)
        with state.lock:
            state.availability[(str(body["zone"]), str(body["instance_type"]))] = value
        return JSONResponse({"ok": True})

    async def admin_quotas(request: Request) -> Response:
        body = await _json_body(request)
        with state.lock:
            state.quotas[str(body["instance_type"])] = int(body["limit"])
        return JSONResponse({"ok": True})

    async def admin_seed(request: Request) -> Response:
        body = await _json_body(request)
        ids = state.seed_servers(str(body.get("zone", "fr-par-1")), int(body["count"]),
                                 tags=[str(t) for t in body.get("tags", [])],
                                 commercial_type=str(body.get("commercial_type", "DEV1-S")),
                                 state=str(body.get("state", "running")))
        return JSONResponse({"ids": ids}, status_code=201)

    async def admin_state(request: Request) -> Response:
        state.tick()
        with state.lock:
            return JSONResponse({
                "servers": [{"id": s.id, "zone": s.zone, "state": s.state, "tags": s.tags,
                             "commercial_type": s.commercial_type} for s in
                            state.servers.values()],
                "volumes": [{"id": v.id, "zone": v.zone, "name": v.name,
                             "server_id": v.server_id, "volume_type": v.volume_type}
                            for v in state.volumes.values()],
            })

    async def admin_reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    inst = "/instance/v1/zones/{zone}"
    routes = [
        Route(f"{inst}/servers", list_servers, methods=["GET"]),
        Route(f"{inst}/servers", create_server, methods=["POST"]),
        Route(f"{inst}/servers/{{server_id}}", get_server, methods=["GET"]),
        Route(f"{inst}/servers/{{server_id}}", delete_server, methods=["DELETE"]),
        Route(f"{inst}/servers/{{server_id}}/action", server_action, methods=["POST"]),
        Route(f"{inst}/servers/{{server_id}}/user_data", list_user_data, methods=["GET"]),
        Route(f"{inst}/servers/{{server_id}}/user_data/{{key}}", user_data_key,
              methods=["GET", "PATCH", "DELETE"]),
        Route(f"{inst}/servers/{{server_id}}/private_nics", private_nics,
              methods=["GET", "POST"]),
        Route(f"{inst}/servers/{{server_id}}/private_nics/{{nic_id}}", get_private_nic,
              methods=["GET"]),
        Route(f"{inst}/security_groups", security_groups, methods=["GET", "POST"]),
        Route(f"{inst}/security_groups/{{sg_id}}", security_group, methods=["GET", "DELETE"]),
        Route(f"{inst}/security_groups/{{sg_id}}/rules", security_group_rules,
              methods=["GET", "POST"]),
        Route(f"{inst}/security_groups/{{sg_id}}/rules/{{rule_id}}", security_group_rule,
              methods=["DELETE"]),
        Route("/vpc/v2/regions/{region}/private-networks", private_networks,
              methods=["GET", "POST"]),
        Route("/vpc/v2/regions/{region}/private-networks/{pn_id}", private_network,
              methods=["GET", "DELETE"]),
        Route("/vpc-gw/v2/zones/{zone}/gateway-networks", gateway_networks,
              methods=["GET", "POST"]),
        Route("/_fake/boot", _admin(admin_boot), methods=["GET"]),
        Route(f"{inst}/products/servers", products_servers, methods=["GET"]),
        Route(f"{inst}/products/servers/availability", availability, methods=["GET"]),
        Route("/block/v1/zones/{zone}/volumes", block_volumes, methods=["GET"]),
        Route("/block/v1/zones/{zone}/volumes/{volume_id}", block_volume,
              methods=["GET", "PATCH", "DELETE"]),
        Route("/ipam/v1/regions/{region}/ips", ipam_ips, methods=["GET"]),
        Route("/_fake/faults", _admin(admin_faults), methods=["GET", "POST", "DELETE"]),
        Route("/_fake/calls", _admin(admin_calls), methods=["GET", "DELETE"]),
        Route("/_fake/clock", _admin(admin_clock), methods=["GET", "POST"]),
        Route("/_fake/config", _admin(admin_config), methods=["GET", "POST"]),
        Route("/_fake/availability", _admin(admin_availability), methods=["POST"]),
        Route("/_fake/quotas", _admin(admin_quotas), methods=["POST"]),
        Route("/_fake/seed", _admin(admin_seed), methods=["POST"]),
        Route("/_fake/state", _admin(admin_state), methods=["GET"]),
        Route("/_fake/reset", _admin(admin_reset), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.fake = state
    return app


__all__ = ["create_app", "region_of"]
