"""FinOps tables beyond the ledger's (imported by :mod:`core.models`, so ``Base.metadata``
holds them)."""

from __future__ import annotations
