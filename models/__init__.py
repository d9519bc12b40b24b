"""The shipped model and its card; installed as ``pulmoscreen.shipped_model`` (see setup.py)."""
