"""The web console: server-rendered page shells (Jinja2) served by the control API at ``/``.

Every number a page shows is read by the page's script from the control API's own ``/api``
routes, on the same origin with the session cookie, so a page never shows what the API would
not: the API's access checks are the console's. Writes (login, logout, terminate, key create and
revoke, password change) are ``fetch`` calls with a JSON body, which the CSRF rule of the access
issue (same ``Origin``, JSON content type) accepts. The page routes themselves only resolve the
caller (:func:`control_api.deps.get_principal`, the API's own) to redirect to the sign-in page and
to show the user's name and the admin-only controls; the API still refuses what is not allowed.

The pages are plain Starlette routes (not ``APIRoute``): they are not part of the OpenAPI
schema nor of the RBAC matrix, which covers ``/api``. See :func:`install`.
"""

from control_api.console.pages import install

__all__ = ["install"]
