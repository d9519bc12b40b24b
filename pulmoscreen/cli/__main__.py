"""``python -m pulmoscreen.cli``: the same command as ``pulmoscreen``."""

from pulmoscreen.cli import main

main()
