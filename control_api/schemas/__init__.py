"""Pydantic request/response schemas of the control API: its wire format.

The server answers with these models and :mod:`control_api.client` parses answers with the same
ones (response models ignore unknown fields, so an older client reads a newer server; request
models forbid them). They import no FastAPI app code, services, auth nor database session
code; the one SQLAlchemy import left is that of the shared enums (see ``enums.py``).
"""
