"""Fine-tune (or train from scratch) the screening ResNet50, resumably, then finalize.

Stages, each resumable: split (``splits.json``) -> preprocess (cached inputs) -> fit (one
checkpoint per epoch, ``state.json``) -> finalize (thresholds on validation, metrics on test,
shipped model and card). ``--resume`` continues after the last completed epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import PreprocessSpec
from training.augment import AugmentSpec, augmentation_layers
from training.dataset import SPLITS, Sample, check_disjoint, discover, split_samples
from training.images import cached_inputs

log = logging.getLogger(__name__)

SERVING_NAME = "screening_model"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved in ``state.json`` and the model card)."""

    data: tuple[Path, ...]
    out: Path
    init: str = "scratch"
    arch: str = "resnet50"
    epochs: int = 8
    head_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    size: int = 224
    seed: int = 0
    patience: int = 3
    target_sensitivity: float = 0.90
    # Thresholds need the sensitivity's lower confidence bound at the target, not only the
    # observed value: ~100 validation positives leave a few points of sampling error.
    threshold_confidence: float = 0.95
    precision: str = "auto"
    imagenet_weights: Path | None = None
    cache_dir: Path | None = None
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    balance: str = "class"
    average_with: Path | None = None

    @property
    def pretrained(self) -> bool:
        return self.init != "scratch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": [str(p) for p in self.data],
            "init": self.init,
            "arch": self.arch,
            "epochs": self.epochs,
            "head_epochs": self.head_epochs if self.pretrained else 0,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
            "size": self.size,
            "seed": self.seed,
            "patience": self.patience,
            "target_sensitivity": self.target_sensitivity,
            "threshold_confidence": self.threshold_confidence,
            "augment": self.augment.to_dict(),
            "balance": self.balance,
            "average_with": str(self.average_with) if self.average_with else None,
        }


def choose_precision(setting: str) -> str:
    """``mixed_bfloat16`` where the hardware computes bf16 natively (GPU, AMX, AVX-512 BF16)."""
    if setting != "auto":
        return setting
    from pulmoscreen.model.backends import cpu_has_bf16, gpu_visible

    return "mixed_bfloat16" if gpu_visible() or cpu_has_bf16() else "float32"


def class_weights(labels: NDArray[np.int64], n_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * n_c)``; a class absent from training gets weight 0."""
    counts = np.bincount(labels, minlength=n_classes)
    total = counts.sum()
    return {
        c: float(total / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)
    }


def group_weights(groups: Sequence[str]) -> NDArray[np.float32]:
    """Per-sample weights ``n / (k * n_g)`` that give each of the ``k`` groups equal weight."""
    names, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return (len(groups) / (len(names) * counts[index])).astype(np.float32)


def sample_weights(
    samples: Sequence[Sample], labels: NDArray[np.int64], balance: str
) -> NDArray[np.float32]:
    """Training weights: ``class`` balances labels; ``group`` balances every (source, label)
    pair, so a small adult source counts as much as the large paediatric one."""
    if balance == "class":
        weights = class_weights(labels, len(LABELS))
        return np.array([weights[int(c)] for c in labels], dtype=np.float32)
    if balance == "group":
        return group_weights([f"{s.source}/{s.label}" for s in samples])
    raise ValueError(f"balance must be 'class' or 'group', got {balance!r}")


def _batches_class() -> type:
    import keras

    class Batches(keras.utils.PyDataset):  # type: ignore[misc, name-defined]
        """Mini-batches from cached grey inputs, repeated into 3 channels, reshuffled per epoch."""

        def __init__(self, x, y, batch_size, *, weights=None, shuffle=False, seed=0):  # type: ignore[no-untyped-def]
            super().__init__()
            self.x, self.y, self.w = x, y, weights
            self.batch_size, self.shuffle = batch_size, shuffle
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(y)) if shuffle else np.arange(len(y))

        def __len__(self) -> int:
            return math.ceil(len(self.y) / self.batch_size)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
            xb = np.repeat(np.asarray(self.x[idx], dtype=np.float32)[..., None], 3, axis=-1)
            if self.w is None:
                return xb, self.y[idx]
            return xb, self.y[idx], self.w[idx]

        def on_epoch_end(self) -> None:
            if self.shuffle:
                self.order = self.rng.permutation(len(self.y))

    return Batches


def save_splits(splits: dict[str, list[Sample]], path: Path) -> None:
    rows = {
        name: [
            {
                "path": str(s.path),
                "label": s.label,
                "source": s.source,
                "patient": s.patient,
                "sha256": s.sha256,
            }
            for s in items
        ]
        for name, items in splits.items()
    }
    path.write_text(json.dumps(rows, indent=1))


def load_splits(path: Path) -> dict[str, list[Sample]]:
    rows = json.loads(path.read_text())
    return {
        name: [
            Sample(Path(r["path"]), r["label"], r["source"], r["patient"], r["sha256"])
            for r in items
        ]
        for name, items in rows.items()
    }


def prepare_splits(config: TrainConfig) -> dict[str, list[Sample]]:
    """Split once (patient-disjoint, stratified); later runs and ``--resume`` reuse the file."""
    path = config.out / "splits.json"
    if path.exists():
        splits = load_splits(path)
    else:
        samples = discover(config.data)
        if not samples:
            raise ValueError(f"no labelled images under {config.data} (expected <label>/<file>)")
        splits = split_samples(samples, seed=config.seed)
        save_splits(splits, path)
    check_disjoint(splits)
    for name in SPLITS:
        log.info("%s: %d images", name, len(splits[name]))
        if not splits[name]:
            raise ValueError(f"the {name} split is empty: each label needs at least 3 patients")
    return splits


def split_arrays(
    config: TrainConfig, splits: dict[str, list[Sample]]
) -> dict[str, tuple[NDArray[np.float32], NDArray[np.int64]]]:
    spec = PreprocessSpec(size=config.size)
    cache = config.cache_dir or config.out / "cache"
    out = {}
    for name in SPLITS:
        x = cached_inputs(splits[name], spec, cache)
        y = np.array([LABELS.index(s.label) for s in splits[name]], dtype=np.int64)
        out[name] = (x, y)
    return out


class _Checkpoint:
    """Saves the training model (with optimizer) each epoch, the best serving model, the state."""

    def __new__(cls, out: Path, serving: Any, phase: int, history: list[dict[str, float]]):  # type: ignore[no-untyped-def]
        import keras

        class Checkpoint(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = {k: float(v) for k, v in (logs or {}).items()}
                history.append({"epoch": epoch + 1, "phase": phase, **logs})
                best = min((h["val_loss"] for h in history[:-1]), default=math.inf)
                if logs.get("val_loss", math.inf) < best:
                    serving.save(out / "best.keras")
                self.model.save(out / "last.keras")
                state = {"phase": phase, "epochs_done": epoch + 1, "history": history}
                (out / "state.json").write_text(json.dumps(state, indent=1))
                log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in logs.items()})

        return Checkpoint()


def _compile(model: Any, learning_rate: float, steps: int) -> None:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def load_trained(path: Path) -> Any:
    """A trained screening model to start from or average with: a ``.keras`` file as saved, or
    a shipped compact ``.npz`` (with its card), built under the current dtype policy."""
    from pulmoscreen.model import build_model, load_screening_model
    from pulmoscreen.model.build import COMPACT_SUFFIX

    if path.suffix != COMPACT_SUFFIX:
        return build_model(LABELS, weights=path)
    return load_screening_model(path, labels=LABELS).model


def _build_training_model(config: TrainConfig) -> tuple[Any, Any]:
    import keras

    from pulmoscreen.model import build_model
    from pulmoscreen.model.build import build_tiny_model

    if config.init not in ("scratch", "imagenet"):
        serving = load_trained(Path(config.init))
    elif config.arch == "tiny":
        serving = build_tiny_model(LABELS, input_size=config.size)
    else:
        serving = build_model(
            LABELS,
            weights=None if config.init == "scratch" else "imagenet",
            input_size=config.size,
            imagenet_weights_file=config.imagenet_weights,
        )
    inputs = keras.Input((config.size, config.size, 3), name="image")
    x = inputs
    for layer in augmentation_layers(config.augment, seed=config.seed):
        x = layer(x)
    return keras.Model(inputs, serving(x), name="training"), serving


def fit(config: TrainConfig, *, resume: bool) -> dict[str, Any]:
    """Run (or continue) the fit stage; returns the saved state."""
    import keras

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(choose_precision(config.precision))
    config.out.mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(config)
    arrays = split_arrays(config, splits)
    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    weights = sample_weights(splits["train"], y_train, config.balance)
    batches = _batches_class()
    train_ds = batches(
        x_train, y_train, config.batch_size, weights=weights, shuffle=True, seed=config.seed
    )
    val_ds = batches(x_val, y_val, config.batch_size)
    state_path = config.out / "state.json"
    state = json.loads(state_path.read_text()) if resume and state_path.exists() else None
    history: list[dict[str, float]] = state["history"] if state else []
    done = state["epochs_done"] if state else 0
    if done >= config.epochs:
        return state or {}
    if state:
        model = keras.models.load_model(config.out / "last.keras")
        serving = model.get_layer(SERVING_NAME)
        log.info("resuming after epoch %d (phase %d)", done, state["phase"])
    else:
        model, serving = _build_training_model(config)
    phases = [(1, config.head_epochs, config.learning_rate)] if config.pretrained else []
    last_lr = config.fine_tune_learning_rate if config.pretrained else config.learning_rate
    phases.append((2, config.epochs, last_lr))
    started = time.monotonic()
    for phase, until, lr in phases:
        if done >= until:
            continue
        backbone = next(layer for layer in serving.layers if isinstance(layer, keras.Model))
        backbone.trainable = not (config.pretrained and phase == 1)
        if not state or state["phase"] != phase:
            _compile(model, lr, len(train_ds) * (until - done))
        callbacks = [
            _Checkpoint(config.out, serving, phase, history),
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.patience,
                # From scratch, validation loss swings widely while the learning rate is high:
                # judge only the second half of the run.
                start_from_epoch=0 if config.pretrained else config.epochs // 2,
            ),
        ]
        model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=done,
            epochs=until,
            callbacks=callbacks,
            verbose=2,
        )
        done = history[-1]["epoch"] if history else done
        state = None
        if done < until:  # early stopping ended the phase
            break
    log.info("fit stage took %.1f min", (time.monotonic() - started) / 60)
    return json.loads(state_path.read_text())


def effective_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    return replace(config, **changes)
