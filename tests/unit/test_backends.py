"""Inference backends: choice, the OpenVINO cache, agreement with Keras, decode pipelining."""

from __future__ import annotations

import numpy as np
import pytest

from pulmoscreen.domain import LABELS
from pulmoscreen.model import backends, load_runner, load_screening_model, predict_batch
from pulmoscreen.model.backends import (
    choose_backend,
    choose_precision,
    cpu_has_bf16,
    export_openvino,
    ir_cache_path,
)
from tests.factories import TINY_SPEC, make_cxr_dicom, make_tiny_model

pytest.importorskip("openvino", reason="OpenVINO is not installed on this platform")


def _batch(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, TINY_SPEC.size, TINY_SPEC.size, 3)) * 255).astype(np.float32)


class TestChoice:
    def test_explicit_backends_are_kept_and_unknown_ones_refused(self):
        assert choose_backend("keras") == "keras"
        assert choose_backend("openvino") == "openvino"
        with pytest.raises(ValueError, match="inference backend"):
            choose_backend("onnx")
        with pytest.raises(ValueError, match="precision"):
            choose_precision("fp8", "openvino")

    def test_auto_is_openvino_on_a_cpu_only_host_and_keras_where_a_gpu_is_visible(
        self, monkeypatch
    ):
        monkeypatch.setattr(backends, "gpu_visible", lambda: False)
        assert choose_backend("auto") == "openvino"
        monkeypatch.setattr(backends, "gpu_visible", lambda: True)
        assert choose_backend("auto") == "keras"
        assert choose_precision("auto", "keras") == "bf16"

    def test_bf16_only_where_the_cpu_has_it(self):
        assert cpu_has_bf16("flags : fpu avx2 avx512f amx_bf16 amx_tile") is True
        assert cpu_has_bf16("flags : fpu avx2 avx512f avx512_bf16") is True
        assert cpu_has_bf16("flags : fpu avx2 fma") is False
        assert choose_precision("f32", "openvino") == "f32"
        assert choose_precision("auto", "openvino") == ("bf16" if cpu_has_bf16() else "f32")


class TestOpenVinoCache:
    def test_exported_once_per_model_and_again_for_a_new_one(self, tmp_path, tiny_model_path):
        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        ir = export_openvino(loaded, tmp_path / "ov")
        assert ir == ir_cache_path(tmp_path / "ov", loaded.card.sha256, TINY_SPEC.size)
        assert ir.exists()
        assert ir.with_suffix(".bin").stat().st_size > 0
        stamp = ir.stat().st_mtime_ns
        assert export_openvino(loaded, tmp_path / "ov") == ir
        assert ir.stat().st_mtime_ns == stamp  # a cache hit converts nothing

        other_path = make_tiny_model(tmp_path / "other", version="tiny-other")
        import keras

        other_model = keras.models.load_model(other_path)
        other_model.set_weights([w + 0.01 for w in other_model.get_weights()])
        other_model.save(other_path)
        other = load_screening_model(other_path, labels=LABELS)
        assert other.card.sha256 != loaded.card.sha256
        assert export_openvino(other, tmp_path / "ov") != ir
        assert len([p for p in (tmp_path / "ov").iterdir() if not p.name.startswith(".")]) == 2

    def test_a_cache_hit_does_not_build_the_keras_model(
        self, tmp_path, tiny_model_path, monkeypatch
    ):
        first = load_runner(
            tiny_model_path, labels=LABELS, backend="openvino", cache_dir=tmp_path / "ov"
        )

        def refuse(*args, **kwargs):
            raise AssertionError("the Keras model was built on a cache hit")

        monkeypatch.setattr(backends, "load_screening_model", refuse)
        again = load_runner(
            tiny_model_path, labels=LABELS, backend="openvino", cache_dir=tmp_path / "ov"
        )
        x = _batch(4)
        assert again.card == first.card
        np.testing.assert_array_equal(predict_batch(again.model, x), predict_batch(first.model, x))

    def test_a_half_written_entry_is_exported_again(self, tmp_path, tiny_model_path):
        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        ir = export_openvino(loaded, tmp_path / "ov")
        ir.with_suffix(".bin").unlink()  # a copy interrupted before the weights
        runner = load_runner(
            tiny_model_path, labels=LABELS, backend="openvino", cache_dir=tmp_path / "ov"
        )
        assert ir.with_suffix(".bin").stat().st_size > 0
        x = _batch(3)
        np.testing.assert_allclose(
            predict_batch(runner.model, x), predict_batch(loaded.model, x), atol=0.02
        )


class TestAgreement:
    @pytest.mark.parametrize(("precision", "atol"), [("f32", 1e-5), ("bf16", 0.02)])
    def test_openvino_matches_keras_float32(self, tmp_path, tiny_model_path, precision, atol):
        reference = load_runner(tiny_model_path, labels=LABELS, backend="keras", precision="f32")
        runner = load_runner(
            tiny_model_path,
            labels=LABELS,
            backend="openvino",
            precision=precision,
            cache_dir=tmp_path,
        )
        assert runner.model.describe() == f"openvino {precision}"
        for n in (1, 5, 16):  # any batch size: the IR's batch dimension is dynamic
            x = _batch(n, seed=n)
            want, got = predict_batch(reference.model, x), predict_batch(runner.model, x)
            assert got.shape == (n, len(LABELS))
            np.testing.assert_allclose(got, want, atol=atol)
            np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-3)

    def test_keras_bf16_builds_under_the_mixed_policy_and_restores_the_global_one(self, tmp_path):
        import keras

        before = keras.config.dtype_policy().name
        runner = load_runner(None, labels=LABELS, backend="keras", precision="bf16")
        assert keras.config.dtype_policy().name == before
        conv = next(
            layer
            for layer in runner.model.model.layers[2].layers
            if isinstance(layer, keras.layers.Conv2D)
        )
        assert conv.dtype_policy.name == "mixed_bfloat16"
        assert runner.model.describe().endswith("bf16")
        assert runner.card.trained is False


class TestDecodePipeline:
    def test_chunks_keep_order_and_carry_the_failures(self, tmp_path):
        from worker.inference import iter_prepared

        paths = {}
        for i in range(7):
            paths[i] = make_cxr_dicom(tmp_path, seed=i, rows=256, cols=256)
        (tmp_path / "broken.dcm").write_bytes(b"DICM" * 10)
        paths[3] = tmp_path / "broken.dcm"
        paths[5] = tmp_path / "gone.dcm"
        chunks = list(iter_prepared(paths, TINY_SPEC, chunk=2, threads=3))
        ids = [i for chunk_ids, _, _ in chunks for i in chunk_ids]
        assert ids == [0, 1, 2, 4, 6]
        assert [len(c[0]) for c in chunks] == [2, 2, 1]
        assert all(c[1].shape == (len(c[0]), 32, 32, 3) for c in chunks)
        failures = {i: reason for _, _, fs in chunks for i, reason, *_ in fs}
        # a missing file is not a failure: it is left queued for ingest to finish its move
        assert 5 not in failures
        assert set(failures) == {3}

    def test_pipelined_inputs_equal_one_at_a_time_inputs(self, tmp_path):
        from pulmoscreen.imaging import read_dicom, to_model_input
        from worker.inference import iter_prepared

        paths = {i: make_cxr_dicom(tmp_path, seed=i, rows=320, cols=256) for i in range(6)}
        got = np.concatenate([x for _, x, _ in iter_prepared(paths, TINY_SPEC, chunk=4)])
        # one at a time, read as the worker reads (at the model's size)
        want = np.stack(
            [
                to_model_input(read_dicom(p, size=TINY_SPEC.size).pixels, TINY_SPEC)
                for p in paths.values()
            ]
        )
        np.testing.assert_array_equal(got, want)


def test_untrained_stand_in_on_openvino_is_cached_under_its_recipe(tmp_path):
    runner = load_runner(None, labels=LABELS, backend="openvino", cache_dir=tmp_path)
    assert runner.card.trained is False
    assert ir_cache_path(tmp_path, runner.card.sha256, runner.card.preprocess.size).exists()
    probs = predict_batch(runner.model, (np.random.default_rng(0).random((2, 224, 224, 3)) * 255))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
