"""Pydantic request/response schemas of the control API."""
