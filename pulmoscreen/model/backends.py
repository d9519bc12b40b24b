"""Inference backends behind one call (:func:`~pulmoscreen.model.infer.predict_batch`).

* ``keras``: the reference. Any Keras backend (TensorFlow on CPUs, JAX or PyTorch on GPUs), in
  float32 or mixed bfloat16.
* ``openvino``: the CPU path. The Keras model is exported once to OpenVINO IR, cached on disk
  under the weights' sha256 (a new model makes a new entry), and compiled in bf16 where the CPU
  computes it natively (AMX, AVX-512 BF16), else in f32.

``auto`` picks OpenVINO on CPU-only hosts where it is installed, and Keras where a GPU is
visible. Both runners expose ``predict_on_batch`` so the rest of the code does not care which
one it holds; ``describe()`` names what is serving.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.model.build import (
    LoadedModel,
    float32_copy,
    load_screening_model,
    resolve_card,
)
from pulmoscreen.model.explain import dense_kernel, feature_map_model

log = logging.getLogger(__name__)

BACKENDS = ("auto", "keras", "openvino")
PRECISIONS = ("auto", "f32", "bf16")
IR_NAME = "model.xml"


def gpu_visible() -> bool:
    """Whether the active Keras backend sees a GPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return bool(jax.devices()[0].platform == "gpu")
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Native bf16 on this CPU: AMX (Sapphire Rapids and later) or AVX-512 BF16."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "amx_bf16" in cpuinfo or "avx512_bf16" in cpuinfo


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_backend(setting: str) -> str:
    """``auto``: OpenVINO on a CPU-only host that has it, else Keras."""
    if setting not in BACKENDS:
        raise ValueError(f"inference backend must be one of {BACKENDS}, got {setting!r}")
    if setting != "auto":
        return setting
    return "openvino" if openvino_available() and not gpu_visible() else "keras"


def choose_precision(setting: str, backend: str) -> str:
    """``auto``: bf16 where the hardware computes it natively (GPU, AMX, AVX-512 BF16)."""
    if setting not in PRECISIONS:
        raise ValueError(f"inference precision must be one of {PRECISIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    if backend == "keras" and gpu_visible():
        return "bf16"
    return "bf16" if cpu_has_bf16() else "f32"


@dataclass
class KerasRunner:
    """A Keras model as it is (float32, or built under the mixed bfloat16 policy)."""

    model: Any
    _with_features: Any = field(default=None, init=False, repr=False)
    _with_maps: Any = field(default=None, init=False, repr=False)

    @property
    def precision(self) -> str:
        """What the model really computes in (a ``.keras`` file keeps its saved policy)."""
        return "bf16" if "bfloat16" in self.model.dtype_policy.name else "f32"

    def predict_on_batch(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)

    def predict_with_features(
        self, batch: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Probabilities and penultimate features, from one forward pass."""
        if self._with_features is None:
            self._with_features = with_features(self.model)
        probs, features = self._with_features.predict_on_batch(batch)
        return np.asarray(probs, dtype=np.float32), np.asarray(features, dtype=np.float32)

    def predict_with_maps(
        self, batch: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Probabilities, penultimate features and the last feature map ``(n, h, w, k)``, from
        one forward pass (:mod:`pulmoscreen.model.explain`)."""
        if self._with_maps is None:
            self._with_maps = feature_map_model(self.model)
        probs, features, maps = self._with_maps.predict_on_batch(batch)
        as_f32 = [np.asarray(a, dtype=np.float32) for a in (probs, features, maps)]
        return as_f32[0], as_f32[1], as_f32[2]

    def classifier_kernel(self) -> NDArray[np.float32]:
        """The dense head's weights ``(k, n_labels)``."""
        return dense_kernel(self.model)

    def describe(self) -> str:
        import keras

        return f"keras ({keras.backend.backend()}) {self.precision}"


class OpenVinoRunner:
    """A compiled OpenVINO model: one synchronous request that uses every core per batch."""

    def __init__(self, ir_path: Path, precision: str) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        self.ir_path, self.precision = ir_path, precision
        core = ov.Core()
        ov_model = core.read_model(str(ir_path))
        # The classifier's input (the pooled features) as a second output, for the content
        # check, and the last feature map as a third, for heatmaps: they cost no extra
        # computation, and the cached IR stays as it is.
        outputs = [_classifier_input(ov_model)]
        self.kernel: NDArray[np.float32] | None
        try:
            self.kernel, maps, self.maps_order = _cam_parts(ov_model)
            outputs.append(maps)
        except ValueError as exc:  # served all the same, without heatmaps
            log.warning("no heatmaps from %s: %s", ir_path.name, exc)
            self.kernel = None
        ov_model.add_outputs(outputs)
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def predict_on_batch(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.predict_with_features(batch)[0]

    def predict_with_features(
        self, batch: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Probabilities and penultimate features, from one forward pass."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self.request.infer({0: batch})
        probs = np.array(self.request.get_output_tensor(0).data, dtype=np.float32)
        features = np.array(self.request.get_output_tensor(1).data, dtype=np.float32)
        return probs, features.reshape(len(batch), -1)

    def predict_with_maps(
        self, batch: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Probabilities, penultimate features and the last feature map ``(n, h, w, k)``, from
        one forward pass."""
        if self.kernel is None:
            raise ValueError("this model's head gives no heatmaps")
        probs, features = self.predict_with_features(batch)
        maps = np.array(self.request.get_output_tensor(2).data, dtype=np.float32)
        return probs, features, np.transpose(maps, self.maps_order)

    def classifier_kernel(self) -> NDArray[np.float32]:
        """The dense head's weights ``(k, n_labels)``, read from the IR."""
        if self.kernel is None:
            raise ValueError("this model's head gives no heatmaps")
        return self.kernel

    def describe(self) -> str:
        return f"openvino {self.precision}"


def _classifier_input(ov_model: Any) -> Any:
    """The output feeding the last matrix product of an OpenVINO model: the classifier
    head's input (the dense ``probs`` layer of every model this project builds)."""
    matmuls = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    if not matmuls:
        raise ValueError("the OpenVINO model has no MatMul: no classifier head to read")
    return matmuls[-1].input_value(0)


def _source(node: Any) -> Any:
    """``node``, or what it converts or reshapes (OpenVINO keeps those apart)."""
    while node.get_type_name() in ("Convert", "Reshape", "Squeeze"):
        node = node.input_value(0).get_node()
    return node


def _cam_parts(ov_model: Any) -> tuple[NDArray[np.float32], Any, tuple[int, ...]]:
    """The classifier's kernel ``(k, n_labels)``, the feature map its global average pooling
    reads (an output) and the axes order that makes that map ``(n, h, w, k)``.

    Raises:
        ValueError: the head is not a mean over two spatial axes then a matrix product.
    """
    matmul = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "MatMul"][-1]
    pooling, weights = (
        _source(matmul.input_value(0).get_node()),
        _source(matmul.input_value(1).get_node()),
    )
    if pooling.get_type_name() != "ReduceMean" or weights.get_type_name() != "Constant":
        raise ValueError("the OpenVINO head is not global average pooling + dense")
    axes = sorted(int(a) % 4 for a in np.ravel(pooling.input_value(1).get_node().get_data()))
    if len(axes) != 2 or 0 in axes:
        raise ValueError(f"the pooling averages axes {axes}, not two spatial ones")
    channel = ({1, 2, 3} - set(axes)).pop()
    kernel = np.asarray(weights.get_data(), dtype=np.float32)
    if matmul.get_attributes().get("transpose_b"):
        kernel = kernel.T
    return kernel, pooling.input_value(0), (0, axes[0], axes[1], channel)


def with_features(model: Any) -> Any:
    """A Keras model with the same input and two outputs: the probabilities and the input of
    the ``probs`` layer (the pooled penultimate features; dropout is off at inference)."""
    import keras

    return keras.Model(model.inputs, [model.outputs[0], model.get_layer("probs").input])


def ir_cache_path(cache_dir: Path, sha256: str, size: int) -> Path:
    """Where the IR of the weights with ``sha256`` at input ``size`` lives."""
    return cache_dir / f"{sha256[:32]}-{size}" / IR_NAME


def _complete(ir: Path) -> bool:
    """An IR with its weights beside it (an interrupted copy or export may lack them)."""
    return ir.exists() and ir.with_suffix(".bin").exists()


def export_openvino(loaded: LoadedModel, cache_dir: Path) -> Path:
    """The OpenVINO IR of ``loaded`` in ``cache_dir``, exported now unless already there.

    Safe when several workers start at once: each exports into a folder of its own and the
    first rename wins.
    """
    target = ir_cache_path(cache_dir, loaded.card.sha256, loaded.card.preprocess.size)
    if _complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".export-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        log.info("exporting model %s to OpenVINO IR in %s", loaded.card.version, target.parent)
        model = float32_copy(loaded.model, loaded.card)  # precision is chosen at compile time
        model.export(str(tmp / IR_NAME), format="openvino", verbose=False)
        if target.parent.exists():  # an incomplete entry (interrupted copy or export)
            shutil.rmtree(target.parent, ignore_errors=True)
        try:
            os.rename(tmp, target.parent)
        except OSError:  # another process got there first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_runner(
    model_path: Path | None,
    *,
    labels: tuple[str, ...],
    thresholds_override: dict[str, float] | None = None,
    backend: str = "auto",
    precision: str = "auto",
    cache_dir: Path | None = None,
) -> LoadedModel:
    """The model with its card, ready to serve on the chosen backend and precision.

    The returned ``model`` is a runner (``predict_on_batch``, ``describe``). On an OpenVINO
    cache hit the Keras model is not built at all. ``cache_dir`` defaults to a folder under the
    system's temporary directory.
    """
    cache_dir = cache_dir or Path(tempfile.gettempdir()) / "pulmoscreen-openvino"
    chosen = choose_backend(backend)
    prec = choose_precision(precision, chosen)
    if chosen == "openvino":
        card = resolve_card(model_path, labels=labels, thresholds_override=thresholds_override)
        ir = ir_cache_path(cache_dir, card.sha256, card.preprocess.size)
        if not _complete(ir):
            loaded = load_screening_model(
                model_path, labels=labels, thresholds_override=thresholds_override
            )
            ir = export_openvino(loaded, cache_dir)
            del loaded
        elif model_path is None:
            log.warning("no trained model configured: serving an UNTRAINED network")
        runner: KerasRunner | OpenVinoRunner = OpenVinoRunner(ir, prec)
    else:
        import keras

        previous = keras.config.dtype_policy().name
        keras.config.set_dtype_policy("mixed_bfloat16" if prec == "bf16" else "float32")
        try:
            loaded = load_screening_model(
                model_path, labels=labels, thresholds_override=thresholds_override
            )
        finally:
            keras.config.set_dtype_policy(previous)
        card, runner = loaded.card, KerasRunner(loaded.model)
        if runner.precision != prec:
            log.warning("%s keeps its saved %s policy", model_path, runner.precision)
    log.info("serving model %s on %s", card.version, runner.describe())
    return LoadedModel(runner, card)
