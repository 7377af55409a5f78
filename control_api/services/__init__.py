"""Domain logic behind the control API routes."""
