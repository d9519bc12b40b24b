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
from training.adapt import DEFAULT_STAGES, stage_layers
from training.adversary import (
    adversarial_model,
    gradient_reversal_class,
    plain_logs,
    serving_of,
)
from training.augment import AugmentSpec, augmentation_layers
from training.dataset import SPLITS, Sample, check_disjoint, discover, split_samples
from training.images import cached_planes

log = logging.getLogger(__name__)

SERVING_NAME = "screening_model"
HELD_OUT = "held_out"
SWA_FILE = "swa.npz"
SWA_STRIDE = 8
PROGRESS_EVERY = 25


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
    # Sources left out of training entirely and evaluated whole afterwards (leave-one-source-out).
    hold_out: tuple[str, ...] = ()
    equalize: str = "none"
    # Fraction trimmed from each edge of the served input (PreprocessSpec.crop); 0: none.
    crop: float = 0.0
    # At most this many images of each (source, label) group per epoch, drawn afresh each epoch
    # (0: all): a large group costs no more time than the weights let it count.
    max_per_group: int = 0
    # Backbone layers before the first one whose name starts with this stay frozen, in
    # inference mode (BatchNorm statistics kept); "" trains the whole backbone.
    train_from: str = ""
    # Leave-one-source-out runs whose held-out figures go into this model's card.
    loso_runs: tuple[Path, ...] = ()
    # Weight of the source-adversary loss (training/adversary.py); 0: no adversary.
    adversarial: float = 0.0
    # From this epoch on (1-based), average the serving weights along the trajectory, every
    # SWA_STRIDE batches and at each epoch's end, and ship the average (0: off; the best
    # checkpoint ships). Dense weight averaging seeks flat minima, which transfer better to
    # unseen domains (SWAD, Cha et al. 2021).
    swa_from: int = 0
    # Every training batch from one source, with the BatchNorm layers of the stages that site
    # adaptation re-estimates (training/adapt.py) normalising by the batch: each source is then
    # seen with its own early statistics, as an adapted site's images are served.
    source_batches: bool = False

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
            "hold_out": list(self.hold_out),
            "equalize": self.equalize,
            "crop": self.crop,
            "max_per_group": self.max_per_group,
            "train_from": self.train_from,
            "adversarial": self.adversarial,
            "swa_from": self.swa_from,
            "source_batches": self.source_batches,
        }

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(size=self.size, equalize=self.equalize, crop=self.crop)


def choose_precision(setting: str) -> str:
    """``mixed_bfloat16`` where the hardware computes bf16 natively (GPU, AMX, AVX-512 BF16)."""
    if setting != "auto":
        return setting
    from pulmoscreen.model.backends import cpu_has_bf16, gpu_visible

    return "mixed_bfloat16" if gpu_visible() or cpu_has_bf16() else "float32"


def group_weights(groups: Sequence[str], *, cap: int = 0) -> NDArray[np.float32]:
    """Per-sample weights ``n / (k * n_g)`` that give each of the ``k`` groups equal weight.

    With ``cap`` (at most that many of a group drawn per epoch) ``n_g`` is what an epoch
    holds, ``min(n_g, cap)``, so a capped group is not weighted down twice.
    """
    names, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if cap > 0:
        counts = np.minimum(counts, cap)
    return (counts.sum() / (len(names) * counts[index])).astype(np.float32)


def sample_weights(
    samples: Sequence[Sample], labels: NDArray[np.int64], balance: str, *, cap: int = 0
) -> NDArray[np.float32]:
    """Training weights: ``class`` balances labels; ``group`` balances every (source, label)
    pair, so a small adult source counts as much as the large paediatric one. ``cap`` is the
    per-epoch draw per (source, label) group (``--max-per-group``), which the weights allow for.
    """
    keys = [f"{s.source}/{s.label}" for s in samples]
    if balance == "group":
        return group_weights(keys, cap=cap)
    if balance != "class":
        raise ValueError(f"balance must be 'class' or 'group', got {balance!r}")
    _, index, counts = np.unique(np.asarray(keys), return_inverse=True, return_counts=True)
    drawn = np.minimum(counts, cap) if cap > 0 else counts
    per_epoch = np.bincount(labels, weights=(drawn / counts)[index], minlength=len(LABELS))
    weights = np.where(per_epoch > 0, drawn.sum() / (len(LABELS) * np.maximum(per_epoch, 1e-9)), 0)
    return np.asarray(weights[labels] * 1.0, dtype=np.float32)


def epoch_order(
    groups: NDArray[np.int64], max_per_group: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """A shuffled epoch: every index, or at most ``max_per_group`` drawn from each group."""
    if max_per_group <= 0:
        return rng.permutation(len(groups))
    chosen = [
        rng.permutation(np.flatnonzero(groups == g))[:max_per_group] for g in np.unique(groups)
    ]
    return rng.permutation(np.concatenate(chosen))


def source_batch_order(
    order: NDArray[np.int64],
    sources: NDArray[np.int64] | None,
    batch_size: int,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """``order`` regrouped so that every run of ``batch_size`` indices comes from one source:
    each source's indices in their order, cut into batches, the batches shuffled. A source's
    last batch may be short; it is padded with its own indices drawn again. ``order`` itself
    when ``sources`` is None."""
    if sources is None:
        return order
    batches = []
    for source in np.unique(sources[order]):
        own = order[sources[order] == source]
        for start in range(0, len(own), batch_size):
            batch = own[start : start + batch_size]
            if len(batch) < batch_size:
                batch = np.concatenate([batch, rng.choice(own, batch_size - len(batch))])
            batches.append(batch)
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def model_inputs(
    planes: NDArray[Any],
    spec: PreprocessSpec,
    augment: AugmentSpec | None,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """A batch of cached resized planes as the model takes it: optionally re-acquired
    (``jitter_plane``), normalised as served, repeated into 3 channels (NHWC)."""
    from pulmoscreen.imaging.preprocess import normalize_grey
    from training.augment import jitter_plane

    planes = np.asarray(planes, dtype=np.float32)
    if augment is not None:
        planes = np.stack([jitter_plane(p, augment, rng) for p in planes])
    grey = np.stack([normalize_grey(p, spec) for p in planes])
    return np.repeat(grey[..., None], 3, axis=-1)


def batch_planes(
    x: NDArray[Any],
    y: NDArray[np.int64],
    idx: NDArray[np.int64],
    mix: tuple[NDArray[np.int64], float] | None,
    rng: np.random.Generator,
) -> NDArray[Any]:
    """The cached planes of ``idx``; with ``mix`` (each image's source, the probability:
    ``AugmentSpec.mix_sources``), some blended with a same-label image of another source."""
    if mix is None:
        return x[idx]
    from training.augment import mix_with_partners, same_label_partners

    sources, p = mix
    partners = same_label_partners(idx, y, sources, p, rng)
    return mix_with_partners(x[idx], x, partners, rng)


def adversarial_batch(
    xb: NDArray[np.float32],
    y: NDArray[np.int64],
    sources: NDArray[np.int64],
    w: NDArray[np.float32],
    adversarial: float,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A batch as the source-adversary training model takes it: the true label as an input
    (the adversary tells sources apart within a label), the source as a second target."""
    onehot = np.eye(len(LABELS), dtype=np.float32)[y]
    return (
        {"image": xb, "label": onehot},
        {"probs": y, "source": sources},
        {"probs": w, "source": w * np.float32(adversarial)},
    )


def _batches_class() -> type:
    import keras

    class Batches(keras.utils.PyDataset):  # type: ignore[misc, name-defined]
        """Batches of cached planes (``model_inputs``), reshuffled and resampled per epoch."""

        def __init__(  # type: ignore[no-untyped-def]
            self,
            x,
            y,
            batch_size,
            spec,
            *,
            weights=None,
            augment=None,
            groups=None,
            max_per_group=0,
            shuffle=False,
            seed=0,
            sources=None,
            adversarial=0.0,
            batch_sources=None,
            mix=None,
        ):
            super().__init__()
            self.x, self.y, self.w, self.spec, self.augment = x, y, weights, spec, augment
            self.batch_size, self.shuffle = batch_size, shuffle
            self.groups = groups if groups is not None else np.zeros(len(y), np.int64)
            self.max_per_group = max_per_group if shuffle else 0
            self.sources, self.adversarial, self.batch_sources = sources, adversarial, batch_sources
            # (each image's source, the probability of a blend): augment.mix_sources; None: off
            self.mix = mix
            self.rng = np.random.default_rng(seed)
            self.order = self._order()

        def _order(self) -> NDArray[np.int64]:
            if not self.shuffle:
                return np.arange(len(self.y))
            order = epoch_order(self.groups, self.max_per_group, self.rng)
            return source_batch_order(order, self.batch_sources, self.batch_size, self.rng)

        def __len__(self) -> int:
            return math.ceil(len(self.order) / self.batch_size)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
            planes = batch_planes(self.x, self.y, idx, self.mix, self.rng)
            xb = model_inputs(planes, self.spec, self.augment, self.rng)
            w = self.w[idx] if self.w is not None else np.ones(len(idx), np.float32)
            if self.sources is not None:
                return adversarial_batch(xb, self.y[idx], self.sources[idx], w, self.adversarial)
            if self.w is None:
                return xb, self.y[idx]
            return xb, self.y[idx], w

        def on_epoch_end(self) -> None:
            self.order = self._order()

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


def make_splits(
    samples: Sequence[Sample], *, hold_out: Sequence[str], seed: int
) -> dict[str, list[Sample]]:
    """Patient-disjoint train/val/test of the samples outside ``hold_out``, and (when sources
    are held out) every sample of theirs under ``held_out``."""
    unknown = set(hold_out) - {s.source for s in samples}
    if unknown:
        raise ValueError(f"--hold-out-source {sorted(unknown)}: no such source in the data")
    splits = split_samples([s for s in samples if s.source not in hold_out], seed=seed)
    if hold_out:
        splits[HELD_OUT] = [s for s in samples if s.source in hold_out]
    return splits


def prepare_splits(config: TrainConfig) -> dict[str, list[Sample]]:
    """Split once (patient-disjoint, stratified); later runs and ``--resume`` reuse the file."""
    path = config.out / "splits.json"
    if path.exists():
        splits = load_splits(path)
    else:
        samples = discover(config.data)
        if not samples:
            raise ValueError(f"no labelled images under {config.data} (expected <label>/<file>)")
        splits = make_splits(samples, hold_out=config.hold_out, seed=config.seed)
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
    """Per split, the cached resized planes (before normalisation) and the label indices."""
    cache = config.cache_dir or config.out / "cache"
    out = {}
    for name in (*SPLITS, HELD_OUT):
        items = splits.get(name, [])
        x = cached_planes(items, config.size, cache)
        y = np.array([LABELS.index(s.label) for s in items], dtype=np.int64)
        out[name] = (x, y)
    return out


class _Checkpoint:
    """Saves the training model (with optimizer) each epoch, the best serving model, the state."""

    def __new__(cls, out: Path, serving: Any, phase: int, history: list[dict[str, float]]):  # type: ignore[no-untyped-def]
        import keras

        class Checkpoint(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                if logs is not None:
                    plain_logs(logs)  # in place: early stopping reads the same names
                logs = {k: float(v) for k, v in (logs or {}).items()}
                history.append({"epoch": epoch + 1, "phase": phase, **logs})
                best = min((h["val_loss"] for h in history[:-1]), default=math.inf)
                if logs.get("val_loss", math.inf) < best:
                    serving.save(out / "best.keras")
                self.model.save(out / "last.keras")
                state = {
                    "phase": phase,
                    "epochs_done": epoch + 1,
                    "history": history,
                    # the policy the fit ran under (the card's "precision")
                    "precision": keras.config.dtype_policy().name,
                }
                (out / "state.json").write_text(json.dumps(state, indent=1))
                log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in logs.items()})

        return Checkpoint()


class _Progress:
    """Logs training throughput: the first two batches of each epoch (the run's first one
    includes compiling the step), every ``PROGRESS_EVERY`` batches, and each epoch's training images
    per second (validation excluded), which goes into the epoch's history as ``images_per_s``
    and so into the card. A run that stalls on a new machine shows where."""

    def __new__(cls, batches: Any):  # type: ignore[no-untyped-def]
        import keras

        class Progress(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
            epoch, done, started, seconds = 0, 0, 0.0, 0.0

            def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                self.epoch, self.done, self.started = epoch + 1, 0, time.monotonic()

            def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
                self.done = min((batch + 1) * batches.batch_size, len(batches.order))
                self.seconds = time.monotonic() - self.started
                if batch < 2 or (batch + 1) % PROGRESS_EVERY == 0:
                    log.info(
                        "epoch %d, batch %d of %d: %.1f s, %.1f img/s",
                        *(self.epoch, batch + 1, len(batches), self.seconds, self.rate()),
                    )

            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                if logs is not None and self.done:
                    logs["images_per_s"] = self.rate()

            def rate(self) -> float:
                return self.done / max(self.seconds, 1e-9)

        return Progress()


class WeightAverage:
    """The running mean of a list of weight arrays, saved and loaded whole (``swa.npz``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mean: list[NDArray[np.float64]] | None = None
        self.count = 0
        if path.exists():
            with np.load(path) as stored:
                self.count = int(stored["count"])
                self.mean = [stored[f"w{i}"] for i in range(len(stored.files) - 1)]

    def add(self, weights: Sequence[Any]) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = [np.array(w, dtype=np.float64) for w in weights]
            return
        for m, w in zip(self.mean, weights, strict=True):
            m += (np.asarray(w, dtype=np.float64) - m) / self.count

    def save(self) -> None:
        if self.mean is None:
            return
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, count=self.count, **{f"w{i}": m for i, m in enumerate(self.mean)})
        tmp.replace(self.path)

    def weights(self, like: Sequence[Any]) -> list[NDArray[Any]]:
        """The mean in the dtypes of ``like`` (the model's own weights)."""
        if self.mean is None:
            raise ValueError(f"{self.path}: no weights were averaged")
        return [m.astype(np.asarray(w).dtype) for m, w in zip(self.mean, like, strict=True)]


class _Averaging:
    """Adds the serving weights to the run's average every ``SWA_STRIDE`` batches and at the end
    of each epoch from ``first_epoch`` (1-based) on; saves it before the epoch's checkpoint."""

    def __new__(cls, out: Path, serving: Any, first_epoch: int):  # type: ignore[no-untyped-def]
        import keras

        average = WeightAverage(out / SWA_FILE)

        class Averaging(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
            epoch = 0

            def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                self.epoch = epoch + 1

            def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
                if self.epoch >= first_epoch and (batch + 1) % SWA_STRIDE == 0:
                    average.add(serving.get_weights())

            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                if epoch + 1 >= first_epoch:
                    average.add(serving.get_weights())
                    average.save()

        return Averaging()


def _compile(model: Any, learning_rate: float, steps: int, *, adversarial: bool) -> None:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))
    loss = "sparse_categorical_crossentropy"
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={"probs": loss, "source": loss} if adversarial else loss,
        metrics={"probs": ["accuracy"]} if adversarial else ["accuracy"],
    )


def load_trained(path: Path, *, size: int | None = None, arch: str = "resnet50") -> Any:
    """A trained screening model to start from or average with: a ``.keras`` file as saved, or
    a shipped compact ``.npz`` (with its card), built under the current dtype policy.

    With ``size``, a model trained at another input side is rebuilt at ``size`` with the same
    weights (the backbone is convolutional and pools globally, so none depends on the side)."""
    from pulmoscreen.model import build_model, load_screening_model
    from pulmoscreen.model.build import COMPACT_SUFFIX, untrained_architecture

    if path.suffix != COMPACT_SUFFIX:
        model = build_model(LABELS, weights=path)
    else:
        model = load_screening_model(path, labels=LABELS).model
    if size is None or model.input_shape[1] == size:
        return model
    resized = untrained_architecture(LABELS, arch=arch, size=size)
    resized.set_weights(model.get_weights())
    log.info("rebuilt %s at %d px (trained at %d px)", path.name, size, model.input_shape[1])
    return resized


def _build_training_model(config: TrainConfig, n_sources: int) -> tuple[Any, Any]:
    import keras

    from pulmoscreen.model import build_model
    from pulmoscreen.model.build import build_tiny_model

    if config.init not in ("scratch", "imagenet"):
        serving = load_trained(Path(config.init), size=config.size, arch=config.arch)
    elif config.arch == "tiny":
        serving = build_tiny_model(LABELS, input_size=config.size)
    else:
        serving = build_model(
            LABELS,
            weights=None if config.init == "scratch" else "imagenet",
            input_size=config.size,
            imagenet_weights_file=config.imagenet_weights,
        )
    augment = augmentation_layers(config.augment, seed=config.seed)
    if config.adversarial > 0:
        model = adversarial_model(
            serving, augment, size=config.size, n_labels=len(LABELS), n_sources=n_sources
        )
        return model, serving
    inputs = keras.Input((config.size, config.size, 3), name="image")
    x = inputs
    for layer in augment:
        x = layer(x)
    return keras.Model(inputs, serving(x), name="training"), serving


def set_trainable(
    serving: Any, *, phase_one: bool, from_: str, batch_stats: Sequence[str] = ()
) -> None:
    """Freeze the whole backbone (head-only phase), or its layers before the first whose name
    starts with ``from_``. Frozen BatchNorm layers run in inference mode in Keras 3, so their
    statistics do not drift while the layers above them learn. The BatchNorm layers of the
    ``batch_stats`` stages stay trainable (batch statistics, their scale and offset learn)."""
    import keras

    backbone = next(layer for layer in serving.layers if isinstance(layer, keras.Model))
    backbone.trainable = not phase_one
    if phase_one:
        return
    if from_:
        names = [layer.name for layer in backbone.layers]
        first = next((i for i, name in enumerate(names) if name.startswith(from_)), None)
        if first is None:
            raise ValueError(f"--train-from {from_!r}: no backbone layer starts with it")
        for layer in backbone.layers[:first]:
            layer.trainable = False
    for layer in stage_layers(backbone, batch_stats):
        layer.trainable = True


def sources_seen_by(init: str | Path | None) -> set[str]:
    """Sources (folder names) the model at ``init`` was trained on, its own starting models'
    included, as its card records them; none for ``scratch``/``imagenet`` or a card-less file."""
    if init is None or str(init) in ("scratch", "imagenet"):
        return set()
    from pulmoscreen.model import card_path_for

    card = card_path_for(Path(init))
    if not card.exists():
        return set()
    details = json.loads(card.read_text()).get("details", {})
    training = details.get("training", {})
    held = set(training.get("hold_out", []))
    own = {Path(p).name for p in training.get("data", [])} - held
    return own | set(details.get("sources_seen", []))


def check_init_unseen(config: TrainConfig) -> None:
    """Refuse a leave-one-source-out run that starts from, or is averaged with, a model which
    saw that source: its held-out figures would not be held out."""
    for option, path in (("--init", config.init), ("--average-with", config.average_with)):
        seen = set(config.hold_out) & sources_seen_by(path)
        if seen:
            raise ValueError(
                f"{option} {path} was trained on {sorted(seen)}, which --hold-out-source "
                "leaves out: use a model that never saw it"
            )


def _datasets(config: TrainConfig, splits: dict[str, list[Sample]]) -> tuple[Any, Any, int]:
    """The training and validation batches, and how many sources training holds."""
    arrays = split_arrays(config, splits)
    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    weights = sample_weights(splits["train"], y_train, config.balance, cap=config.max_per_group)
    batches = _batches_class()
    groups = np.unique([f"{s.source}/{s.label}" for s in splits["train"]], return_inverse=True)[1]
    names = sorted({s.source for s in splits["train"]})
    known = {name: i for i, name in enumerate(names)}
    train_sources = np.array([known[s.source] for s in splits["train"]], dtype=np.int64)
    # the adversary's targets; a validation image of a source absent from training counts as
    # the first source
    adversary = config.adversarial > 0
    val_sources = np.array([known.get(s.source, 0) for s in splits["val"]], dtype=np.int64)

    train_ds = batches(
        x_train,
        y_train,
        config.batch_size,
        config.spec,
        weights=weights,
        augment=config.augment if config.augment.acquisition_p > 0 else None,
        groups=groups,
        max_per_group=config.max_per_group,
        shuffle=True,
        seed=config.seed,
        sources=train_sources if adversary else None,
        adversarial=config.adversarial,
        batch_sources=train_sources if config.source_batches else None,
        mix=(train_sources, config.augment.mix_sources) if config.augment.mix_sources else None,
    )
    val_ds = batches(
        x_val,
        y_val,
        config.batch_size,
        config.spec,
        sources=val_sources if adversary else None,
        adversarial=config.adversarial,
    )
    return train_ds, val_ds, len(names)


def _restore_or_build(
    config: TrainConfig, state: dict[str, Any] | None, n_sources: int
) -> tuple[Any, Any]:
    """The training model and its serving part: from the last checkpoint, or built anew."""
    import keras

    if not state:
        return _build_training_model(config, n_sources)
    adversary = config.adversarial > 0
    if adversary:
        gradient_reversal_class()  # registers the layer the saved model names
    model = keras.models.load_model(config.out / "last.keras")
    serving = serving_of(model, SERVING_NAME) if adversary else model.get_layer(SERVING_NAME)
    log.info("resuming after epoch %d (phase %d)", state["epochs_done"], state["phase"])
    return model, serving


def _callbacks(
    config: TrainConfig,
    serving: Any,
    phase: int,
    history: list[dict[str, float]],
    batches: Any,
) -> list[Any]:
    import keras

    return [
        _Progress(batches),  # before the checkpoint, which writes the epoch's logs
        *([_Averaging(config.out, serving, config.swa_from)] if config.swa_from > 0 else []),
        _Checkpoint(config.out, serving, phase, history),
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=config.patience,
            # From scratch, validation loss swings widely while the learning rate is high:
            # judge only the second half of the run.
            start_from_epoch=0 if config.pretrained else config.epochs // 2,
        ),
    ]


def fit(config: TrainConfig, *, resume: bool) -> dict[str, Any]:
    """Run (or continue) the fit stage; returns the saved state."""
    import keras

    check_init_unseen(config)
    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(choose_precision(config.precision))
    config.out.mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(config)
    train_ds, val_ds, n_sources = _datasets(config, splits)
    state_path = config.out / "state.json"
    state = json.loads(state_path.read_text()) if resume and state_path.exists() else None
    history: list[dict[str, float]] = state["history"] if state else []
    done = state["epochs_done"] if state else 0
    if done >= config.epochs:
        return state or {}
    model, serving = _restore_or_build(config, state, n_sources)
    phases = [(1, config.head_epochs, config.learning_rate)] if config.pretrained else []
    last_lr = config.fine_tune_learning_rate if config.pretrained else config.learning_rate
    phases.append((2, config.epochs, last_lr))
    started = time.monotonic()
    for phase, until, lr in phases:
        if done >= until:
            continue
        set_trainable(
            serving,
            phase_one=config.pretrained and phase == 1,
            from_=config.train_from,
            batch_stats=DEFAULT_STAGES if config.source_batches else (),
        )
        if not state or state["phase"] != phase:
            _compile(model, lr, len(train_ds) * (until - done), adversarial=config.adversarial > 0)
        model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=done,
            epochs=until,
            callbacks=_callbacks(config, serving, phase, history, train_ds),
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
