"""Site calibration end to end on real images, the shipped model and the real PostgreSQL.

One source of ``../shared/data`` plays the site: a labelled folder of its images calibrates
the served model and is applied; new images of the same source, sent as DICOMs, are flagged
by the new thresholds; a second calibration, from a CSV of the images just screened (nothing is
scored again), supersedes the first; both stay in SQL, and the views and the nightly report
name the calibration in force for each result.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cv2
import pytest
from sqlalchemy import func, select, text

from pulmoscreen.cli import screen_folder
from pulmoscreen.cli.calibration import CalibrationRequest, run_calibration
from pulmoscreen.config import Settings
from pulmoscreen.db import Image, PredictionRow, session_factory
from pulmoscreen.db.calibrations import calibrations
from pulmoscreen.model.card import ModelCard, card_path_for
from tests.factories import make_cxr_dicom
from training.calibration import CalibrationError

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT.parent / "shared" / "data" / "cxr" / "shenzhen_128"
MODEL = ROOT / "models" / "pulmoscreen_resnet50.npz"
PER_CLASS = 60  # per label for the calibration: enough TB cases to prove 0.90 at 95 %

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not SITE.is_dir(), reason=f"the site's images ({SITE}) are not here"),
    pytest.mark.skipif(not MODEL.exists(), reason=f"the shipped model ({MODEL}) is not here"),
]


def site_images() -> dict[str, list[Path]]:
    return {label: sorted((SITE / label).glob("*.png")) for label in ("normal", "tuberculosis")}


def labelled_folder(images: dict[str, list[Path]], out: Path) -> Path:
    """The first :data:`PER_CLASS` images of each label as ``<label>/<image>`` links."""
    for label, paths in images.items():
        (out / label).mkdir(parents=True)
        for path in paths[:PER_CLASS]:
            (out / label / path.name).symlink_to(path)
    return out


def as_dicoms(paths: list[Path], drop: Path, *, seed: int) -> None:
    for k, path in enumerate(paths):
        # 128 px copies, enlarged to a radiograph's size: ingest refuses images that small
        grey = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (512, 512))
        make_cxr_dicom(drop, seed=seed + k, pixels=grey, filename=f"{path.stem}.dcm")


def screened(url: str, ids: list[int]) -> list[tuple[str, bool, int | None, float, float]]:
    stmt = (
        select(
            Image.sop_uid,
            PredictionRow.flagged,
            PredictionRow.calibration_id,
            PredictionRow.p_tuberculosis,
            PredictionRow.p_pneumonia,
        )
        .join(PredictionRow, PredictionRow.image_id == Image.id)
        .where(Image.id.in_(ids))
        .order_by(Image.id)
    )
    with session_factory(url)() as session:
        return [tuple(row) for row in session.execute(stmt)]


def assert_flags_follow(rows: list, calibration_id: int, thresholds: dict[str, float]) -> None:
    assert rows, "no image was screened"
    for _, flagged, used, p_tb, p_pn in rows:
        assert used == calibration_id
        expected = p_tb >= thresholds["tuberculosis"] or p_pn >= thresholds["pneumonia"]
        assert flagged == expected, (p_tb, p_pn, thresholds)


def calibrate_and_screen(settings: Settings, tmp_path: Path) -> tuple[int, dict, list]:
    """The first calibration, applied, then six new images of each label screened."""
    images = site_images()
    site = labelled_folder(images, tmp_path / "site")
    card = ModelCard.load(card_path_for(MODEL))
    first, report, first_id = run_calibration(
        settings,
        CalibrationRequest(out=tmp_path / "cal1", data=(site,), apply=True, by="site-lead"),
    )
    assert first_id is not None
    assert report.exists()
    assert (tmp_path / "cal1" / "calibration.pdf").exists()
    # images the content check refuses are left out, as the worker would quarantine them
    assert sum(first.sample_counts.values()) == 2 * PER_CLASS - first.excluded
    assert first.excluded <= 6
    [tb] = first.diseases
    assert tb.sensitivity_lower_bound >= 0.9
    assert 0.5 <= tb.auc_low <= tb.auc <= tb.auc_high <= 1.0
    in_force = {**card.thresholds, **first.thresholds}

    drop = tmp_path / "inbox1"
    as_dicoms(
        [p for paths in images.values() for p in paths[PER_CLASS : PER_CLASS + 6]], drop, seed=7000
    )
    ids, done = screen_folder(settings, drop, local_worker=True, timeout=300)
    assert done
    rows = screened(settings.database_url, ids)
    assert_flags_follow(rows, first_id, in_force)
    return first_id, in_force, rows


class TestSiteCalibration:
    def test_calibrate_apply_screen_and_supersede(self, pg_url, tmp_path):
        settings = Settings(
            database_url=pg_url,
            model_path=MODEL,
            data_dir=tmp_path / "state",
            stable_seconds=0,
            report_dir=tmp_path / "reports",
        )
        first_id, first_thresholds, rows = calibrate_and_screen(settings, tmp_path)

        # The images just screened, with their reference labels, as the site's CSV.
        by_uid = {p.stem: label for label, paths in site_images().items() for p in paths}
        with session_factory(pg_url)() as session:
            sources = dict(session.execute(select(Image.sop_uid, Image.source_path)).all())
        lines = [f"{uid},{by_uid[Path(sources[uid]).stem]}" for uid, *_ in rows]
        csv = tmp_path / "labels.csv"
        csv.write_text("SOPInstanceUID,label\n" + "\n".join(lines) + "\n")
        n_before = count_predictions(pg_url)

        too_few = CalibrationRequest(out=tmp_path / "cal2", labels_csv=csv, apply=True)
        with pytest.raises(CalibrationError, match="it takes at least 25 positives"):
            run_calibration(settings, too_few)
        plain = CalibrationRequest(
            out=tmp_path / "cal2", labels_csv=csv, target=0.8, confidence=0.0, apply=True
        )
        second, _, second_id = run_calibration(settings, plain)
        assert count_predictions(pg_url) == n_before  # nothing scored twice

        with session_factory(pg_url)() as session:
            stored = calibrations(session)
        assert [(c.id, c.active, c.superseded_at is not None) for c in stored] == [
            (first_id, False, True),
            (second_id, True, False),
        ]
        assert stored[0].created_by == "site-lead"
        assert stored[0].thresholds == {"tuberculosis": first_thresholds["tuberculosis"]}

        # New images flag by the second calibration, in the same process: no restart.
        drop = tmp_path / "inbox2"
        images = site_images()
        as_dicoms(
            [p for paths in images.values() for p in paths[PER_CLASS + 6 : PER_CLASS + 8]],
            drop,
            seed=8000,
        )
        ids, done = screen_folder(settings, drop, local_worker=True, timeout=300)
        assert done
        assert_flags_follow(
            screened(pg_url, ids), second_id, {**first_thresholds, **second.thresholds}
        )
        assert_views_and_report_name_both(settings, first_id, second_id)


def count_predictions(url: str) -> int:
    with session_factory(url)() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionRow)) or 0)


def assert_views_and_report_name_both(settings: Settings, first_id: int, second_id: int) -> None:
    from reporting.service import run_report

    with session_factory(settings.database_url)() as session:
        shown = session.execute(
            text(
                "SELECT DISTINCT calibration_id, calibrated_by FROM screening_results "
                "WHERE status = 'predicted' ORDER BY calibration_id"
            )
        ).all()
        flagged = session.scalars(text("SELECT DISTINCT calibration_id FROM flagged_patients"))
        assert set(flagged) <= {first_id, second_id}
    assert [c for c, _ in shown] == [first_id, second_id]
    day = datetime.now(UTC).date()
    summary = run_report(settings.model_copy(update={"site_timezone": "UTC"}), day=day).summary
    names = sorted(m.calibration or "" for m in summary.models)
    assert [n.split(" of ")[0] for n in names] == [
        f"site calibration {first_id}",
        f"site calibration {second_id}",
    ]
