"""Stored secrets (imported by :mod:`core.models`). Filled by the secrets work (#13/#11)."""

from __future__ import annotations
