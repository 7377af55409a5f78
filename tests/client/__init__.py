"""Tests of the typed clients, over real HTTP."""
