"""Inventiv control API: users, orgs, keys, instance lifecycle, usage and cost records."""
