"""What the command prints and logs: one console, and the libraries kept quiet unless asked."""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType

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


# Lines TensorFlow's native code writes while it loads, whatever TF_CPP_MIN_LOG_LEVEL says
# (absl logs them before its own set-up on CPUs where oneDNN is on by default: AVX-512, AMX).
IMPORT_CHATTER = ("oneDNN custom operations are on", "absl::InitializeLog()")


@contextmanager
def native_stderr_filtered(chatter: Sequence[str]) -> Iterator[None]:
    """Hold back the lines written to file descriptor 2 (native code included) inside the
    block that contain one of ``chatter``; every other line is written out afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not any(part in line for part in chatter):
                    sys.stderr.write(line)
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Loads a module with its original loader, its native start-up chatter held back."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_stderr_filtered(IMPORT_CHATTER):
            self.loader.exec_module(module)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, the first time anything imports it, with a quiet loader."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_native_logs(argv: Sequence[str]) -> None:
    """Keep TensorFlow's native start-up chatter out of the output unless ``argv`` asks for
    ``-v``/``--verbose``. A value already in the environment wins: the user chose it."""
    if VERBOSE_FLAGS.isdisjoint(argv):
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        if "tensorflow" not in sys.modules:
            sys.meta_path.insert(0, _QuietTensorFlow())


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
