"""The console's page routes, its static files and the security headers of its answers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from control_api.deps import get_principal
from control_api.errors import ApiError
from control_api.services import identity
from core.states import InstanceState

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

_env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                   autoescape=select_autoescape(["html"]), auto_reload=False)

# Scripts and styles only from this origin (no inline script); the pages are never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Page:
    path: str
    template: str
    title: str
    nav: str


# The navigation, in order. ``nav`` is the menu entry a page highlights.
PAGES = (
    Page("/costs", "costs.html", "Costs", "costs"),
    Page("/instances", "instances.html", "Instances", "instances"),
    Page("/instances/{instance_id}", "instance.html", "Instance", "instances"),
    Page("/deployments", "deployments.html", "Deployments", "deployments"),
    Page("/keys", "keys.html", "API keys", "keys"),
    Page("/logs", "logs.html", "Action logs", "logs"),
    Page("/catalog", "catalog.html", "Catalog", "catalog"),
    Page("/playground", "playground.html", "Playground", "playground"),
    Page("/people", "people.html", "Users and organisations", "people"),
    Page("/profile", "profile.html", "Profile", "profile"),
)
NAV = [("costs", "/costs", "Costs"), ("instances", "/instances", "Instances"),
       ("deployments", "/deployments", "Deployments"), ("keys", "/keys", "API keys"),
       ("logs", "/logs", "Action logs"), ("catalog", "/catalog", "Catalog"),
       ("playground", "/playground", "Playground"), ("people", "/people", "People"),
       ("profile", "/profile", "Profile")]


@dataclass
class Viewer:
    """What a page shell needs to know about the caller (no secret, nothing the API hides)."""

    username: str
    is_platform_admin: bool
    memberships: list[dict[str, str]] = field(default_factory=list)


def viewer_of(request: Request) -> Viewer | None:
    """The signed-in caller, resolved exactly as the API resolves it; None when signed out."""
    state = request.app.state
    with state.sessionmaker() as db:
        try:
            p = get_principal(request, db, state.jwt, state.settings)
        except ApiError:
            return None
        return Viewer(
            username=p.user.username, is_platform_admin=p.is_platform_admin,
            memberships=[{"org_id": str(org.id), "org_name": org.name, "role": m.role.value}
                         for m, org in identity.memberships_of(db, p.user_id)])


def render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def _links(request: Request) -> list[tuple[str, str]]:
    settings = request.app.state.settings
    out = []
    ray = getattr(settings, "ray_dashboard_url", None)
    if ray:
        out.append(("Ray dashboard", str(ray)))
    grafana = getattr(settings, "grafana_url", None)
    if grafana:
        out.append(("Grafana", str(grafana)))
    return out


# API routes a page uses only when this API has them (added by other work in progress), so a
# page never asks for what would only answer 404 (a browser logs every such answer as an error).
OPTIONAL_ROUTES = {"invitations": ("/api/orgs/{id}/invitations", "GET"),
                   "archive": ("/api/instances/{id}/archive", "POST")}


def _features(app: Any) -> dict[str, bool]:
    cached = getattr(app.state, "console_features", None)
    if cached is None:
        have = {(r.path, m) for r in app.routes for m in (getattr(r, "methods", None) or ())}
        cached = {k: v in have for k, v in OPTIONAL_ROUTES.items()}
        app.state.console_features = cached
    return cached  # type: ignore[no-any-return]


def _safe_next(value: str | None) -> str:
    # Only same-site paths: "//host" or "/\\host" would leave the origin.
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/costs"
    return value


def _page_handler(page: Page) -> Any:
    def handler(request: Request) -> Response:
        viewer = viewer_of(request)
        if viewer is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
        params = dict(request.path_params)
        if "instance_id" in params:
            try:
                params["instance_id"] = str(uuid.UUID(params["instance_id"]))
            except ValueError:
                return render("error.html", 404, viewer=viewer, nav=NAV, active=page.nav,
                              title="Not found", message="No such instance.",
                              links=_links(request))
        settings = request.app.state.settings
        return render(page.template, viewer=viewer, nav=NAV, active=page.nav, title=page.title,
                      params=params, links=_links(request), states=[s.value for s in InstanceState],
                      openai_url=getattr(settings, "openai_base_url", None),
                      features=_features(request.app))
    handler.__name__ = f"console_{page.nav}_{len(page.path)}"
    return handler


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def login_page(request: Request) -> Response:
    nxt = _safe_next(request.query_params.get("next"))
    if viewer_of(request) is not None:
        return RedirectResponse(nxt, status_code=303)
    return render("login.html", title="Sign in", next=nxt, viewer=None, nav=[], active="",
                  links=[])


def reset_page(request: Request) -> Response:
    """The password-reset form; the token stays in the URL fragment, read by the page's script
    (never sent here). Public: whoever holds the link may set the password once."""
    return render("reset.html", title="Set a new password", viewer=None, nav=[], active="",
                  links=[])


def home(request: Request) -> Response:
    return RedirectResponse("/costs" if viewer_of(request) else "/login", status_code=303)


class ConsoleStatic(StaticFiles):
    """Static files with the console's security headers."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "public, max-age=300"
        return response


def routes() -> list[BaseRoute]:
    """The console's routes: exact paths only, so ``/api/*`` 404s and 405s stay the API's."""
    out: list[BaseRoute] = [
        Route("/", home, methods=["GET"], name="console_home"),
        Route("/login", login_page, methods=["GET"], name="console_login"),
        Route("/reset", reset_page, methods=["GET"], name="console_reset"),
    ]
    out += [Route(p.path, _page_handler(p), methods=["GET"], name=f"console_{p.nav}_{i}")
            for i, p in enumerate(PAGES)]
    out.append(Mount("/static", app=ConsoleStatic(directory=str(STATIC)), name="console_static"))
    return out


def install(app: FastAPI) -> None:
    """Add the console's routes to ``app`` (after the API's, which keep precedence). The API
    routes the console needed (own sessions, password-reset links) are ordinary routers that
    :func:`control_api.app.create_app` includes with the others."""
    app.router.routes.extend(routes())
