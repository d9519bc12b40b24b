"""Shared unit fixtures: an empty drop folder, the list tasks are sent to, and what reaches the
decoding helper."""

from pathlib import Path

import pytest


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def sent() -> list[int]:
    return []


@pytest.fixture
def decoder_sources(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What each call of the decoding helper was handed (a path, or the file's bytes); the
    helper still decodes."""
    from pulmoscreen.imaging import dicom

    sources: list[object] = []
    real = dicom.decode_isolated

    def spy(source, **options):  # type: ignore[no-untyped-def]
        sources.append(source)
        return real(source, **options)

    monkeypatch.setattr(dicom, "decode_isolated", spy)
    return sources
