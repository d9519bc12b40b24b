"""Alembic environment and revisions; installed as ``pulmoscreen.migrations`` (see setup.py)."""
