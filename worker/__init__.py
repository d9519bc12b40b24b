"""Inference worker: ``celery -A worker worker -Q inference``.

The Celery app is created on first attribute access so importing the package (for example from
the CLI, which builds its own app) neither reads the environment nor loads TensorFlow.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from worker.app import default_app

        return default_app()
    raise AttributeError(name)
