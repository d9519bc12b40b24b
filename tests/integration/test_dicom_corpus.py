"""`pulmoscreen screen` over a drop folder of real-world trouble, in one run of the real CLI.

Every good file must be predicted, every bad one quarantined with exactly one row and the right
code, no file may be lost, the process must survive all of them (a decoder that aborts its
process included), and nothing it logs may carry a PatientName, PatientID or birth date.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pulmoscreen.db import Image, PredictionRow, session_factory
from pulmoscreen.storage import PROCESSED_DIR, QUARANTINE_DIR, SIDECAR_SUFFIX
from tests.integration.conftest import pulmo_env, run_cli
from tests.integration.corpus import PREDICTED, Corpus, build_corpus

pytestmark = pytest.mark.integration
SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
SHARED_EXPECTED = {
    "chest_cr/siim_acr_chest_jpeg_baseline.dcm": PREDICTED,
    "other_cr/CR-ModalitySequenceLUT.dcm": "not_chest",  # no BodyPartExamined; "TEETH"
    **{f"other_cr/RG2_{enc}": "not_chest" for enc in ("J2KI", "J2KR", "JLSL", "JLSN", "JPLY")},
    "codec_fixtures/JPEGLSNearLossless_16.dcm": "missing_uid",
}


def outcomes(url: str) -> dict[str, list[str]]:
    """Per source path, the outcome of each row: ``predicted`` or the reject code."""
    found: dict[str, list[str]] = {}
    with session_factory(url)() as session:
        for source, status, reason in session.execute(
            select(Image.source_path, Image.status, Image.reject_reason)
        ):
            found.setdefault(source, []).append(PREDICTED if status == "predicted" else reason)
    return found


def prediction_counts(url: str) -> Counter[int]:
    with session_factory(url)() as session:
        rows = session.execute(
            select(PredictionRow.image_id, func.count()).group_by(PredictionRow.image_id)
        )
        return Counter(dict(rows.all()))


def files_left(root: Path) -> list[Path]:
    """Files (and links, pipes) still in the drop folder outside processed/ and quarantine/."""
    return [
        p
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] not in (PROCESSED_DIR, QUARANTINE_DIR) and not p.is_dir()
    ]


def screen_corpus(corpus: Corpus, env: dict[str, str], url: str, cwd: Path) -> str:
    """Run the CLI once over the corpus and check every file's fate; returns all it printed."""
    result = run_cli("screen", "-v", "--timeout", "300", str(corpus.root), env=env, cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    good, bad = len(corpus.good), len(corpus.bad)
    assert f"{good} predicted, {bad} quarantined, 0 pending" in result.stdout, output[-3000:]

    found = outcomes(url)
    assert {source: rows[0] for source, rows in found.items()} == corpus.expected
    assert all(len(rows) == 1 for rows in found.values())  # exactly one row per file
    predictions = prediction_counts(url)
    assert len(predictions) == good
    assert set(predictions.values()) == {1}

    assert files_left(corpus.root) == []  # nothing lost: every file was moved somewhere
    processed = [p for p in (corpus.root / PROCESSED_DIR).rglob("*") if p.is_file()]
    quarantine = list((corpus.root / QUARANTINE_DIR).iterdir())
    sidecars = [p for p in quarantine if p.name.endswith(SIDECAR_SUFFIX)]
    assert len(processed) == good
    assert len(sidecars) == bad
    assert len(quarantine) == 2 * bad
    return output


class TestBadInputCorpus:
    def test_every_file_has_its_fate_and_no_log_has_phi(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        corpus = build_corpus(tmp_path / "inbox", outside=tmp_path / "outside")
        assert len(corpus.bad) >= 40
        assert set(corpus.bad.values()) >= {
            "not_dicom",
            "truncated",
            "no_pixel_data",
            "unsupported_transfer_syntax",
            "decode_failed",
            "missing_uid",
            "not_chest",
            "not_frontal",
            "wrong_modality",
            "multiframe",
            "too_small",
            "too_large",
            "duplicate",
            "unreadable",
        }
        outside_before = sorted(p.name for p in (tmp_path / "outside").iterdir())
        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_BROKER_URL=redis_url,
            PULMO_MODEL_PATH=str(tiny_model_path),
        )
        output = screen_corpus(corpus, env, pg_url, tmp_path)

        leaked = sorted(value for value in corpus.phi if value in output)
        assert leaked == [], "PHI in the logs"
        assert "Phiname" not in output
        # the logs of ingest and of the worker were both captured
        assert "quarantined: not_dicom" in output
        assert "rejected at decode: decode_failed" in output
        assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == outside_before


@pytest.mark.skipif(
    not (SHARED_DICOM / "manifest.tsv").exists(),
    reason=f"real DICOM fixtures not found at {SHARED_DICOM} (../shared/data is not checked out)",
)
class TestRealFiles:
    def test_real_files_from_shared_data(self, tiny_model_path, tmp_path):
        corpus = Corpus(tmp_path / "inbox")
        with (SHARED_DICOM / "manifest.tsv").open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                outcome = SHARED_EXPECTED.get(row["file"], "wrong_modality")
                corpus.copy(SHARED_DICOM / row["file"], row["file"], outcome)
        assert len(corpus.expected) >= 18
        env = pulmo_env(
            PULMO_DATA_DIR=str(tmp_path / "state"), PULMO_MODEL_PATH=str(tiny_model_path)
        )
        url = f"sqlite:///{tmp_path / 'state' / 'pulmoscreen.db'}"
        output = screen_corpus(corpus, env, url, tmp_path)
        assert not [value for value in corpus.phi if value in output]
        real_chest = outcomes(url)["chest_cr/siim_acr_chest_jpeg_baseline.dcm"]
        assert real_chest == [PREDICTED]  # the real adult chest CR is screened, once
