"""Run ``pulmoscreen`` and SIGKILL it at an exact point of ingest, the Nth time it gets there.

    python -m tests.faults.killpoint POINT N MARKER -- ingest DIR --watch

The product has no test hooks; this wrapper wraps three of ingest's own calls in this process
(the code that runs is the product's) and kills the process with SIGKILL, the signal nothing
can catch, at one of:

- ``commit``: an image's row is committed, its file not moved (before ``move_file`` in
  ``Ingestor._accept``, before ``quarantine_file`` on behalf of ``Ingestor._quarantine``);
- ``move``: the file is moved, its task not sent (after ``move_file`` / ``quarantine_file``);
- ``send``: the task is sent (after ``enqueue_images`` called from ``Ingestor._accept``).

Before it kills, it appends the point to MARKER, so a scenario knows the kill happened there
(and fails, rather than passing untested, if a renamed function means it never does).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

POINTS = ("commit", "move", "send")
# (module, attribute, the ingest method on whose behalf a call counts, kill before/after it)
TARGETS: dict[str, list[tuple[str, str, str, str]]] = {
    "commit": [
        ("ingest.service", "move_file", "_accept", "before"),
        ("pulmoscreen.quarantine", "quarantine_file", "_quarantine", "before"),
    ],
    "move": [
        ("ingest.service", "move_file", "_accept", "after"),
        ("pulmoscreen.quarantine", "quarantine_file", "_quarantine", "after"),
    ],
    "send": [("pulmoscreen.queue", "enqueue_images", "_accept", "after")],
}
# Ingestor methods that call the targets: the nearest one on the stack is the call's owner
# (move_file in _existing, finishing an interrupted move, is not _accept's move)
OWNERS = frozenset(
    {"_accept", "_existing", "_quarantine", "_give_up", "recover", "resend_stale", "scan_once"}
)


def _owner(depth: int = 10) -> str | None:
    """The nearest :data:`OWNERS` method above the wrapper."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name in OWNERS:
            return frame.f_code.co_name
        frame = frame.f_back  # type: ignore[assignment]
    return None


def arm(point: str, nth: int, marker: Path) -> None:
    """Wrap the point's calls; the ``nth`` counted call kills this process."""
    import importlib

    seen = [0]

    def die() -> None:
        with marker.open("a") as fh:
            fh.write(f"{point}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(real: Callable[..., Any], owner: str, when: str) -> Callable[..., Any]:
        @functools.wraps(real)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counted = _owner() == owner
            if counted:
                seen[0] += 1
            if counted and seen[0] == nth and when == "before":
                die()
            result = real(*args, **kwargs)
            if counted and seen[0] == nth and when == "after":
                die()
            return result

        return wrapper

    for module_name, attribute, owner, when in TARGETS[point]:
        module = importlib.import_module(module_name)
        real = getattr(module, attribute, None)
        if real is None:
            raise SystemExit(f"killpoint: {module_name}.{attribute} is gone; update TARGETS")
        setattr(module, attribute, wrap(real, owner, when))


def main(argv: list[str]) -> None:
    point, nth, marker, sep, *rest = argv
    if point not in POINTS or sep != "--":
        raise SystemExit(__doc__)
    arm(point, int(nth), Path(marker))
    from pulmoscreen.cli import main as pulmoscreen_main

    sys.argv = ["pulmoscreen", *rest]
    pulmoscreen_main()


if __name__ == "__main__":
    main(sys.argv[1:])
