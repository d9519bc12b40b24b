"""What the command prints and logs: one console, and the libraries kept quiet unless asked."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 150)

# TensorFlow reads these once, when it loads, so they are set before any command runs; the
# embedded worker (a thread) and every child process inherit them. Level 3 keeps back its and
# XLA's native log lines below FATAL: the start-up notices (CPU instructions, oneDNN, cuDNN and
# cuBLAS factory registration, TF-TRT) are not for screening staff, and a real failure still
# reaches them as a Python exception.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}
VERBOSE_FLAGS = frozenset({"-v", "--verbose"})
# Library loggers that speak at INFO about their own machinery, never about a screening.
CHATTY_LOGGERS = ("celery", "kombu", "amqp", "absl", "tensorflow", "keras", "alembic")


def quiet_native_logs(argv: Sequence[str]) -> None:
    """Keep TensorFlow's native start-up chatter out of the output unless ``argv`` asks for
    ``-v``/``--verbose``. A value already in the environment wins: the user chose it."""
    if VERBOSE_FLAGS.isdisjoint(argv):
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)


def setup_logging(verbose: bool) -> None:
    """Our own loggers at INFO when verbose, else WARNING; the libraries' at WARNING."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # memory:// has no host; kombu warns about it on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)
