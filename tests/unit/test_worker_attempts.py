"""The worker's attempts at an image (SQLite, the tiny model, no services).

A worker that dies mid-batch takes no batch-mate with it; a temporary error is tried again;
a failure of the worker itself rejects nothing; a rejected image is never also scored; the
model row is looked up, not remembered, and a model registered again does not take
``active`` back.
"""

from __future__ import annotations

import errno
import multiprocessing
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from sqlalchemy import func, select

from ingest import Ingestor
from pulmoscreen.config import Settings
from pulmoscreen.db import Image, ModelRow, PredictionRow, queries, session_factory
from pulmoscreen.domain import LABELS, Prediction, RejectReason
from pulmoscreen.model import ModelCard
from tests.factories import add_model_row, make_cxr_dicom
from worker import heatmaps, inference
from worker.inference import predict_images


def ingest(drop: Path, sqlite_url: str, n: int, *, seed: int = 40) -> list[int]:
    for k in range(n):
        make_cxr_dicom(drop, seed=seed + k, filename=f"{k:02d}.dcm")
    sessions = session_factory(sqlite_url)
    outcomes = Ingestor(
        drop, sessions=sessions, enqueue=lambda ids: None, stable_seconds=0
    ).scan_once()
    assert [o.status for o in outcomes] == ["queued"] * n
    return [o.image_id for o in outcomes]


def settings_for(sqlite_url: str, model: Path, **options: object) -> Settings:
    return Settings(database_url=sqlite_url, model_path=model, **options)


def rows(sqlite_url: str) -> dict[int, Image]:
    with session_factory(sqlite_url)() as session:
        return {image.id: image for image in session.scalars(select(Image))}


def predictions_per_image(sqlite_url: str) -> dict[int, int]:
    stmt = select(PredictionRow.image_id, func.count()).group_by(PredictionRow.image_id)
    with session_factory(sqlite_url)() as session:
        return dict(session.execute(stmt).all())


def _die_on(poison: str, sqlite_url: str, model: str, ids: list[int], max_attempts: int) -> None:
    """A worker process that dies (as by SIGKILL or a decoder segfault in-process) when it
    reads the poison file; every other image goes through the real code."""
    import os

    from worker import inference as worker_inference

    real = worker_inference.read_model_input

    def read(path: Path, *args: object, **options: object):  # type: ignore[no-untyped-def]
        if Path(path).name.endswith(poison):
            os._exit(137)
        return real(path, *args, **options)

    worker_inference.read_model_input = read  # type: ignore[assignment]
    predict_images(
        settings_for(sqlite_url, Path(model), max_attempts=max_attempts, decode_threads=1),
        ids,
        worker="w",
    )


def a_card(version: str) -> ModelCard:
    return ModelCard(version=version, labels=LABELS, thresholds={"tuberculosis": 0.5})


def run_worker_process(*args: object) -> int:
    """``_die_on`` in a fresh process (spawned: no state inherited); its exit code."""
    proc = multiprocessing.get_context("spawn").Process(target=_die_on, args=args)
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode is not None, "the worker process hung"
    return proc.exitcode


class TestWorkerCrash:
    def test_a_file_that_kills_its_worker_takes_no_batch_mate_with_it(
        self, tmp_path, sqlite_url, tiny_model_path
    ):
        drop = tmp_path / "inbox"
        ids = ingest(drop, sqlite_url, 5)
        poison = rows(sqlite_url)[ids[2]]
        poison_name = Path(poison.stored_path).name
        args = (poison_name, sqlite_url, str(tiny_model_path), ids, 2)

        # 1st: the whole batch dies with its worker; every attempt was counted before reading
        assert run_worker_process(*args) == 137
        found = rows(sqlite_url)
        assert {found[i].status for i in ids} == {"queued"}
        assert {found[i].attempts for i in ids} == {1}
        # 2nd: images tried before go one at a time: the two before the poison are scored,
        # the poison kills the worker alone
        assert run_worker_process(*args) == 137
        found = rows(sqlite_url)
        assert [found[i].status for i in ids] == ["predicted"] * 2 + ["queued"] * 3
        assert found[ids[2]].attempts == 2
        # 3rd (a healthy worker): the poison has had its attempts and is quarantined unread;
        # the two after it are scored
        assert (
            predict_images(
                settings_for(sqlite_url, tiny_model_path, max_attempts=2), ids, worker="w"
            )
            == []
        )
        found = rows(sqlite_url)
        assert [found[i].status for i in ids] == ["predicted"] * 2 + ["rejected"] + [
            "predicted"
        ] * 2
        assert found[ids[2]].reject_reason == "worker_crash"
        assert "died 2 times" in found[ids[2]].reject_detail
        assert "/quarantine/" in found[ids[2]].stored_path
        assert Path(found[ids[2]].stored_path).is_file()
        assert predictions_per_image(sqlite_url) == {i: 1 for i in ids if i != ids[2]}


class TestTemporaryFailure:
    def eio_reader(self, monkeypatch, failing: set[str], times: list[int]):
        real = inference.read_model_input

        def read(path: Path, *args: object, **options: object):  # type: ignore[no-untyped-def]
            if Path(path).name in failing and times[0] > 0:
                times[0] -= 1
                raise OSError(errno.EIO, "Input/output error", str(path))
            return real(path, *args, **options)

        monkeypatch.setattr(inference, "read_model_input", read)

    def test_a_read_error_that_passes_is_tried_again_not_quarantined(
        self, tmp_path, sqlite_url, tiny_model_path, monkeypatch
    ):
        drop = tmp_path / "inbox"
        ids = ingest(drop, sqlite_url, 3)
        name = Path(rows(sqlite_url)[ids[1]].stored_path).name
        self.eio_reader(monkeypatch, {name}, [1])
        settings = settings_for(sqlite_url, tiny_model_path)
        assert predict_images(settings, ids, worker="w") == [ids[1]]  # to be sent again
        image = rows(sqlite_url)[ids[1]]
        assert (image.status, image.attempts, image.retry_reason) == ("queued", 1, "unreadable")
        assert predict_images(settings, ids, worker="w") == []
        assert {i: r.status for i, r in rows(sqlite_url).items()} == dict.fromkeys(ids, "predicted")
        assert predictions_per_image(sqlite_url) == dict.fromkeys(ids, 1)

    def test_an_error_that_stays_is_final_after_the_last_attempt(
        self, tmp_path, sqlite_url, tiny_model_path, monkeypatch
    ):
        drop = tmp_path / "inbox"
        [image_id] = ingest(drop, sqlite_url, 1)
        name = Path(rows(sqlite_url)[image_id].stored_path).name
        self.eio_reader(monkeypatch, {name}, [100])
        settings = settings_for(sqlite_url, tiny_model_path, max_attempts=3)
        for _ in range(3):
            assert predict_images(settings, [image_id], worker="w") == [image_id]
        assert rows(sqlite_url)[image_id].status == "queued"
        assert predict_images(settings, [image_id], worker="w") == []
        image = rows(sqlite_url)[image_id]
        assert (image.status, image.reject_reason) == ("rejected", "unreadable")
        assert "Input/output error" in image.reject_detail
        assert "the last of 3 attempts" in image.reject_detail
        assert Path(image.stored_path).parent == drop / "quarantine"

    @pytest.mark.parametrize(("crashed", "retry"), [(True, True), (False, False)])
    def test_a_killed_or_hung_decoder_may_pass_a_refusal_does_not(
        self, tmp_path, monkeypatch, crashed, retry
    ):
        from pulmoscreen.domain import Rejected
        from pulmoscreen.imaging import dicom
        from pulmoscreen.imaging.isolation import DecoderError

        def decode(path: Path, **_: object):  # type: ignore[no-untyped-def]
            raise DecoderError("decoder process died (killed by signal 9)", crashed=crashed)

        monkeypatch.setattr(dicom, "decode_isolated", decode)
        with pytest.raises(Rejected) as caught:
            dicom._decode_encapsulated(tmp_path / "x.dcm")
        assert (caught.value.reason, caught.value.retry) == (RejectReason.DECODE_FAILED, retry)


class TestWorkerFailure:
    def test_a_failure_of_the_worker_itself_rejects_nothing_and_counts_no_attempt(
        self, tmp_path, sqlite_url, tiny_model_path, monkeypatch
    ):
        drop = tmp_path / "inbox"
        ids = ingest(drop, sqlite_url, 4)
        failures = [2]

        def out_of_memory(real):  # type: ignore[no-untyped-def]
            def run(model, inputs):  # type: ignore[no-untyped-def]
                if failures[0]:
                    failures[0] -= 1
                    raise MemoryError("out of memory allocating the batch")
                return real(model, inputs)

            return run

        # the forward pass that scores the batch: with feature maps (for heatmaps) when the
        # model can flag, else the plain one
        monkeypatch.setattr(inference, "predict_batch", out_of_memory(inference.predict_batch))
        monkeypatch.setattr(
            heatmaps, "predict_with_maps", out_of_memory(heatmaps.predict_with_maps)
        )
        settings = settings_for(sqlite_url, tiny_model_path, max_attempts=1)
        for _ in range(2):
            with pytest.raises(MemoryError):
                predict_images(settings, ids, worker="w")
            found = rows(sqlite_url)
            assert {(r.status, r.attempts) for r in found.values()} == {("queued", 0)}
        assert predict_images(settings, ids, worker="w") == []
        assert predictions_per_image(sqlite_url) == dict.fromkeys(ids, 1)

    def test_a_missing_model_file_rejects_nothing(self, tmp_path, sqlite_url, tiny_model_path):
        drop = tmp_path / "inbox"
        ids = ingest(drop, sqlite_url, 2)
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the loader raises
            predict_images(settings_for(sqlite_url, tmp_path / "gone.keras"), ids, worker="w")
        assert {(r.status, r.attempts) for r in rows(sqlite_url).values()} == {("queued", 0)}


class TestResultsAndModels:
    def test_a_rejected_image_is_never_also_scored(self, tmp_path, sqlite_url):
        drop = tmp_path / "inbox"
        [image_id] = ingest(drop, sqlite_url, 1)
        sessions = session_factory(sqlite_url)
        card = a_card("m1")
        with sessions.begin() as session:
            model_id = queries.register_model(session, card)
            assert queries.reject_image(
                session, image_id, reason=RejectReason.WORKER_CRASH, detail="x", stored_path=None
            )
        pred = Prediction(
            label="tuberculosis",
            probabilities={"normal": 0.0, "pneumonia": 0.0, "tuberculosis": 1.0},
            abnormality_score=100,
            flagged=True,
        )
        with sessions.begin() as session:
            new = queries.save_predictions(
                session, model_id=model_id, results=[(image_id, pred)], worker="w"
            )
        assert new == 0
        assert predictions_per_image(sqlite_url) == {}
        assert rows(sqlite_url)[image_id].status == "rejected"

    def test_a_model_registered_again_does_not_take_active_back(self, sqlite_url):
        sessions = session_factory(sqlite_url)
        old, new = a_card("old"), a_card("new")
        with sessions.begin() as session:
            old_id = queries.register_model(session, old)
            new_id = queries.register_model(session, new)  # a new deployment
            assert queries.register_model(session, old) == old_id  # a straggler restarts
        with sessions() as session:
            active = session.scalars(select(ModelRow.id).where(ModelRow.active)).all()
        assert active == [new_id]

    def test_the_model_row_is_found_again_after_a_database_reset(
        self, tmp_path, sqlite_url, tiny_model_path
    ):
        from pulmoscreen.db import upgrade_database

        drop = tmp_path / "inbox"
        settings = settings_for(sqlite_url, tiny_model_path)
        predict_images(settings, ingest(drop, sqlite_url, 1, seed=60), worker="w")
        # the database is restored from an empty backup under the running worker
        from pulmoscreen.db.session import make_engine

        make_engine(sqlite_url).dispose()
        db = Path(sqlite_url.removeprefix("sqlite:///"))
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            path.unlink(missing_ok=True)
        upgrade_database(sqlite_url)
        with session_factory(sqlite_url).begin() as session:
            add_model_row(session, version="another")
        ids = ingest(drop, sqlite_url, 1, seed=61)
        predict_images(settings, ids, worker="w")
        with session_factory(sqlite_url)() as session:
            pred = session.scalars(select(PredictionRow)).one()
            model = session.get(ModelRow, pred.model_id)
        assert model is not None
        assert model.version == "tiny-test-1"


class TestReExport:
    def test_a_copy_sent_again_after_a_failed_read_is_screened(
        self, tmp_path, sqlite_url, tiny_model_path, monkeypatch
    ):
        drop = tmp_path / "inbox"
        original = make_cxr_dicom(tmp_path / "pacs", seed=70, filename="study.dcm")
        drop.mkdir()
        (drop / "study.dcm").write_bytes(original.read_bytes())
        sessions = session_factory(sqlite_url)
        ingestor = Ingestor(drop, sessions=sessions, enqueue=lambda ids: None, stable_seconds=0)
        [first] = ingestor.scan_once()
        real = inference.read_model_input

        def eio(path: Path, *_: object, **__: object):  # type: ignore[no-untyped-def]
            raise OSError(errno.ESTALE, "Stale file handle", str(path))

        monkeypatch.setattr(inference, "read_model_input", eio)
        settings = settings_for(sqlite_url, tiny_model_path, max_attempts=1)
        predict_images(settings, [first.image_id], worker="w")
        predict_images(settings, [first.image_id], worker="w")
        assert rows(sqlite_url)[first.image_id].reject_reason == "unreadable"
        monkeypatch.setattr(inference, "read_model_input", real)

        # the site sends the study again: it is screened, not refused as a duplicate
        (drop / "study.dcm").write_bytes(original.read_bytes())
        [again] = ingestor.scan_once()
        assert (again.image_id, again.status) == (first.image_id, "queued")
        assert predict_images(settings, [first.image_id], worker="w") == []
        found = rows(sqlite_url)
        assert len(found) == 2
        image = found[first.image_id]
        assert (image.status, image.attempts, image.reject_reason) == ("predicted", 1, None)
        assert "/processed/" in image.stored_path
        [earlier] = [r for i, r in found.items() if i != first.image_id]
        # the first copy keeps its own outcome, in quarantine
        assert (earlier.status, earlier.reject_reason, earlier.sop_uid) == (
            "rejected",
            "unreadable",
            None,
        )
        assert f"received as image {first.image_id}" in earlier.reject_detail
        assert Path(earlier.stored_path).parent == drop / "quarantine"
        assert Path(earlier.stored_path).is_file()
        assert earlier.study_id == image.study_id


class TestFileNotInPlace:
    def test_a_file_not_moved_yet_costs_no_attempt(self, tmp_path, sqlite_url, tiny_model_path):
        drop = tmp_path / "inbox"
        [image_id] = ingest(drop, sqlite_url, 1, seed=90)
        stored = Path(rows(sqlite_url)[image_id].stored_path)
        stored.replace(drop / "back.dcm")  # as if ingest had not finished the move
        settings = settings_for(sqlite_url, tiny_model_path, max_attempts=1)
        for _ in range(3):
            assert predict_images(settings, [image_id], worker="w") == []
        image = rows(sqlite_url)[image_id]
        assert (image.status, image.attempts) == ("queued", 0)


class TestFileChangedSinceIngest:
    """A file rewritten in place after ingest registered it (a sender correcting a header) is
    never scored under the old header: the worker hands it back and ingest registers it anew."""

    def rewrite(self, stored: Path, *, seed: int, patient: str) -> None:
        fresh = make_cxr_dicom(stored.parent / "new", seed=seed, PatientID=patient)
        stored.write_bytes(fresh.read_bytes())  # in place: same inode, new bytes
        fresh.unlink()

    def test_a_file_rewritten_before_the_worker_reads_it_is_registered_again(
        self, tmp_path, sqlite_url, tiny_model_path
    ):
        drop = tmp_path / "inbox"
        [image_id] = ingest(drop, sqlite_url, 1, seed=95)
        stored = Path(rows(sqlite_url)[image_id].stored_path)
        self.rewrite(stored, seed=95, patient="CORRECTED")  # same UIDs, another PatientID
        settings = settings_for(sqlite_url, tiny_model_path)
        assert predict_images(settings, [image_id], worker="w") == []
        assert predictions_per_image(sqlite_url) == {}
        assert image_id not in rows(sqlite_url)  # the old registration is gone
        [back] = [p for p in drop.iterdir() if p.is_file()]
        sessions = session_factory(sqlite_url)
        [outcome] = Ingestor(
            drop, sessions=sessions, enqueue=lambda ids: None, stable_seconds=0
        ).scan_once()
        assert outcome.status == "queued"
        predict_images(settings, [outcome.image_id], worker="w")
        with sessions() as session:
            image = session.get(Image, outcome.image_id)
            assert (image.status, image.study.patient_id) == ("predicted", "CORRECTED")
        assert predictions_per_image(sqlite_url) == {outcome.image_id: 1}
        assert not back.exists()

    def test_a_file_rewritten_while_it_is_decoded_is_not_scored(
        self, tmp_path, sqlite_url, tiny_model_path, monkeypatch
    ):
        drop = tmp_path / "inbox"
        [image_id] = ingest(drop, sqlite_url, 1, seed=96)
        real = inference.read_model_input

        def read_then_rewritten(path: Path, *args: object, **options: object):  # type: ignore[no-untyped-def]
            image = real(path, *args, **options)
            self.rewrite(Path(path), seed=96, patient="CORRECTED")
            return image

        monkeypatch.setattr(inference, "read_model_input", read_then_rewritten)
        settings = settings_for(sqlite_url, tiny_model_path, decode_threads=1)
        assert predict_images(settings, [image_id], worker="w") == []
        assert predictions_per_image(sqlite_url) == {}
        assert image_id not in rows(sqlite_url)
        assert [p.name for p in drop.iterdir() if p.is_file()] == ["00.dcm"]

    @pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
    def test_each_file_is_read_once(
        self, tmp_path, sqlite_url, tiny_model_path, monkeypatch, syntax, decoder_sources
    ):
        """The sha256 check and the decode share one read: the worker opens each file once,
        and a compressed one's bytes go to the decoding helper, which opens nothing."""
        import builtins
        import io
        import os

        drop = tmp_path / "inbox"
        for k in range(2):
            make_cxr_dicom(drop, seed=98 + k, filename=f"{k:02d}.dcm", transfer_syntax=syntax)
        sessions = session_factory(sqlite_url)
        ids = [
            o.image_id
            for o in Ingestor(
                drop, sessions=sessions, enqueue=lambda ids: None, stable_seconds=0
            ).scan_once()
        ]
        stored = {Path(rows(sqlite_url)[i].stored_path).resolve() for i in ids}
        opened: list[Path] = []

        def counting(real):  # type: ignore[no-untyped-def]
            def open_counted(file, *args, **kwargs):  # type: ignore[no-untyped-def]
                if isinstance(file, str | Path) and Path(file).resolve() in stored:
                    opened.append(Path(file).resolve())
                return real(file, *args, **kwargs)

            return open_counted

        for module, name in ((os, "open"), (io, "open"), (builtins, "open")):
            monkeypatch.setattr(module, name, counting(getattr(module, name)))
        predict_images(settings_for(sqlite_url, tiny_model_path), ids, worker="w")
        assert predictions_per_image(sqlite_url) == dict.fromkeys(ids, 1)
        assert sorted(opened) == sorted(stored)
        assert len(decoder_sources) == (2 if syntax == JPEG2000Lossless else 0)
        assert all(isinstance(source, bytes) for source in decoder_sources)

    def test_ingest_registers_anew_a_file_handed_back_before_its_row_was_removed(
        self, tmp_path, sqlite_url
    ):
        """The worker moves the file back, then removes the row: killed in between, ingest
        finds a queued row whose file left processed/ and a file with other content."""
        drop = tmp_path / "inbox"
        [image_id] = ingest(drop, sqlite_url, 1, seed=97)
        stored = Path(rows(sqlite_url)[image_id].stored_path)
        self.rewrite(stored, seed=97, patient="CORRECTED")
        stored.replace(drop / "00.dcm")
        ingestor = Ingestor(
            drop, sessions=session_factory(sqlite_url), enqueue=lambda ids: None, stable_seconds=0
        )
        assert ingestor.scan_once() == []  # the stale row is removed first
        [outcome] = ingestor.scan_once()
        assert outcome.status == "queued"
        [image] = rows(sqlite_url).values()
        assert image.id == outcome.image_id
        with session_factory(sqlite_url)() as session:
            assert session.get(Image, image.id).study.patient_id == "CORRECTED"
