"""`pulmoscreen screen` end to end, as a user runs it: embedded defaults, then Redis + PG."""

from pathlib import Path

import pytest
from sqlalchemy import func, select

from pulmoscreen.db import Image, PredictionRow, session_factory
from tests.factories import make_cxr_dicom
from tests.integration.conftest import pulmo_env, run_cli

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def fill_drop_folder(folder: Path, *, valid: int) -> int:
    """``valid`` good chest DICOMs plus broken files; returns how many are broken."""
    for seed in range(valid):
        make_cxr_dicom(folder / f"P{seed}" / "S1", seed=300 + seed, filename=f"IM{seed}")
    (folder / "readme.dcm").write_text("not a dicom")
    make_cxr_dicom(folder, seed=399, filename="hand.dcm", BodyPartExamined="HAND")
    cut = make_cxr_dicom(folder, seed=398, filename="cut.dcm")
    cut.write_bytes(cut.read_bytes()[:3000])
    return 3


def totals(url: str) -> tuple[int, dict[str, int]]:
    with session_factory(url)() as session:
        n_pred = session.scalar(select(func.count()).select_from(PredictionRow))
        reasons = dict(
            session.execute(
                select(Image.reject_reason, func.count())
                .where(Image.status == "rejected")
                .group_by(Image.reject_reason)
            ).all()
        )
    return n_pred, reasons


def screen_twice(folder: Path, env: dict[str, str], url: str, tmp_path: Path) -> None:
    broken = fill_drop_folder(folder, valid=5)
    first = run_cli("screen", str(folder), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "5 predicted, 3 quarantined, 0 pending" in first.stdout
    n_pred, reasons = totals(url)
    assert n_pred == 5
    assert reasons == {"not_dicom": 1, "not_chest": 1, "truncated": 1}
    assert sum(reasons.values()) == broken

    again = run_cli("screen", str(folder), env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert totals(url) == (n_pred, reasons)


class TestScreen:
    def test_embedded_defaults(self, tiny_model_path, tmp_path):
        env = pulmo_env(
            PULMO_DATA_DIR=str(tmp_path / "state"), PULMO_MODEL_PATH=str(tiny_model_path)
        )
        url = f"sqlite:///{tmp_path / 'state' / 'pulmoscreen.db'}"
        screen_twice(tmp_path / "inbox", env, url, tmp_path)

    def test_redis_and_postgresql(self, pg_url, redis_url, tiny_model_path, tmp_path):
        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_BROKER_URL=redis_url,
            PULMO_MODEL_PATH=str(tiny_model_path),
        )
        screen_twice(tmp_path / "inbox", env, pg_url, tmp_path)
