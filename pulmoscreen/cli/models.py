"""Making and shipping models: ``train``, ``rethreshold``, ``evaluate``, ``export-openvino`` and
``pack-data``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pulmoscreen.cli.options import (
    InputCache,
    LabelledFolders,
    ModelFile,
    TargetSensitivity,
    ThresholdConfidence,
)
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import get_settings
from pulmoscreen.domain import LABELS

if TYPE_CHECKING:
    from training.train import TrainConfig

# train's options, in the order --help lists them.
RunFolder = Annotated[Path, typer.Option(help="Run folder: splits, checkpoints, model, metrics.")]
Init = Annotated[str, typer.Option(help="scratch, imagenet, or a .keras/.npz model path.")]
Arch = Annotated[str, typer.Option(help="resnet50, or tiny for dry runs.")]
Epochs = Annotated[int, typer.Option(help="Total epochs (both phases).")]
HeadEpochs = Annotated[int, typer.Option(help="Frozen-backbone epochs (pretrained).")]
FineTuneRate = Annotated[
    float, typer.Option(help="Learning rate with the backbone unfrozen (pretrained init).")
]
Balance = Annotated[
    str, typer.Option(help="class: balance labels; group: balance (source, label) pairs.")
]
AverageWith = Annotated[
    Path | None,
    typer.Option(help="Ship the average of the best weights and this model's (.keras/.npz)."),
]
InputSide = Annotated[int, typer.Option(help="Input side in pixels.")]
Equalize = Annotated[
    str, typer.Option(help="Served intensity equalisation after the clip: none or clahe.")
]
Crop = Annotated[
    float,
    typer.Option(help="Served centre crop: fraction of the side trimmed from each edge (0: none)."),
]
HeldOutSources = Annotated[
    list[str] | None,
    typer.Option(help="Source (folder name) left out of training, evaluated whole; repeatable."),
]
LosoRuns = Annotated[
    list[Path] | None,
    typer.Option(help="A --hold-out-source run whose held-out figures go in the card."),
]
Acquisition = Annotated[
    float, typer.Option(help="Probability of each acquisition jitter (0: off).")
]
SourceBatches = Annotated[
    bool,
    typer.Option(
        help="Each batch from one source, early BatchNorm layers on batch statistics "
        "(site adaptation's stages)."
    ),
]
MaxPerGroup = Annotated[
    int, typer.Option(help="Images per (source, label) group per epoch (0: all).")
]
Adversarial = Annotated[
    float, typer.Option(help="Weight of a source adversary on the features (0: off).")
]
TrainFrom = Annotated[
    str, typer.Option(help="Freeze backbone layers before the first named so (e.g. conv4).")
]
SwaFrom = Annotated[
    int, typer.Option(help="Ship the weights averaged from this epoch on (0: the best).")
]
MixSources = Annotated[
    float,
    typer.Option(
        help="Probability of blending a training image with one of its label from another "
        "source (0: off)."
    ),
]
Patience = Annotated[int, typer.Option(help="Early-stopping patience, epochs.")]
Rotation = Annotated[float, typer.Option(help="Max rotation, degrees (0: off).")]
Zoom = Annotated[float, typer.Option(help="Max zoom fraction (0: off).")]
Shift = Annotated[float, typer.Option(help="Max width/height shift fraction (0: off).")]
Flip = Annotated[bool, typer.Option(help="Random horizontal flips.")]
Precision = Annotated[str, typer.Option(help="auto, float32 or mixed_bfloat16.")]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run in OUT.")]
FitOnly = Annotated[bool, typer.Option(help="Stop after the fit stage.")]

# train's options that make the run's AugmentSpec, and the field each one sets there.
AUGMENT_OPTIONS = {
    "rotation": "rotation_deg",
    "zoom": "zoom",
    "shift": "shift",
    "flip": "flip",
    "acquisition": "acquisition_p",
    "mix_sources": "mix_sources",
}
# train's options that steer the command, not the run: TrainConfig has no field for them.
COMMAND_OPTIONS = ("resume", "fit_only")


def train(
    ctx: typer.Context,
    data: LabelledFolders,
    out: RunFolder,
    init: Init = "scratch",
    arch: Arch = "resnet50",
    epochs: Epochs = 8,
    head_epochs: HeadEpochs = 2,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    fine_tune_learning_rate: FineTuneRate = 1e-4,
    balance: Balance = "class",
    average_with: AverageWith = None,
    size: InputSide = 224,
    equalize: Equalize = "none",
    crop: Crop = 0.0,
    hold_out_source: HeldOutSources = None,
    loso_run: LosoRuns = None,
    acquisition: Acquisition = 0.0,
    mix_sources: MixSources = 0.0,
    max_per_group: MaxPerGroup = 0,
    adversarial: Adversarial = 0.0,
    train_from: TrainFrom = "",
    swa_from: SwaFrom = 0,
    source_batches: SourceBatches = False,
    seed: int = 0,
    patience: Patience = 3,
    rotation: Rotation = 10.0,
    zoom: Zoom = 0.1,
    shift: Shift = 0.1,
    flip: Flip = True,
    target_sensitivity: TargetSensitivity = 0.9,
    threshold_confidence: ThresholdConfidence = 0.95,
    precision: Precision = "auto",
    cache_dir: InputCache = None,
    resume: Resume = False,
    fit_only: FitOnly = False,
) -> None:
    """Train the screening model on labelled folders, then calibrate, evaluate and package it."""
    from training.finalize import finalize, loso_figures
    from training.train import fit

    setup_logging(True)
    config = train_config(ctx.params, imagenet_weights=get_settings().imagenet_weights)
    with _exit_on_value_error():
        loso_figures(config.loso_runs)  # a wrong --loso-run fails now, not after the fit
    fit(config, resume=resume)
    if not fit_only:
        card = finalize(config)
        console.print(f"model {card.version} written to {out}")


def train_config(options: Mapping[str, Any], *, imagenet_weights: Path | None) -> TrainConfig:
    """The run that ``train``'s options (``ctx.params``: option name to value) ask for."""
    from training.augment import AugmentSpec
    from training.train import TrainConfig

    fields = {name: value for name, value in options.items() if name not in COMMAND_OPTIONS}
    augment = {field: fields.pop(option) for option, field in AUGMENT_OPTIONS.items()}
    return TrainConfig(
        data=tuple(fields.pop("data")),
        hold_out=tuple(fields.pop("hold_out_source") or ()),
        loso_runs=tuple(fields.pop("loso_run") or ()),
        augment=AugmentSpec(**augment),
        imagenet_weights=imagenet_weights,
        **fields,
    )


@contextmanager
def _exit_on_value_error() -> Iterator[None]:
    """A ValueError here is the user's input at fault: say why on stderr and exit 2."""
    try:
        yield
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def rethreshold(
    model: Annotated[Path, typer.Option(help="Trained model (.npz) with its card.")],
    out: Annotated[Path, typer.Option(help="Folder for the model, its new card and test/.")],
    target_sensitivity: TargetSensitivity = 0.9,
    threshold_confidence: ThresholdConfidence = 0.95,
    cache_dir: InputCache = None,
) -> None:
    """Choose a trained model's flag thresholds again, on the validation split of its own
    training data (rebuilt from its card and checked), and re-run the held-out test."""
    from training.finalize import rethreshold as run_rethreshold

    setup_logging(True)
    with _exit_on_value_error():
        card = run_rethreshold(
            model,
            out,
            target=target_sensitivity,
            confidence=threshold_confidence,
            cache_dir=cache_dir,
        )
    console.print(f"model {card.version} (thresholds {card.thresholds}) written to {out}")


def evaluate(
    data: LabelledFolders,
    out: Annotated[Path, typer.Option(help="Where metrics.json, predictions.csv, plots go.")],
    model: ModelFile = None,
) -> None:
    """Evaluate a model on labelled folders: metrics.json, predictions.csv and PNG charts."""
    from training.evaluate import evaluate_folders

    setup_logging(True)
    metrics = evaluate_folders(data, model or get_settings().resolved_model_path(), out)
    console.print_json(
        data={k: metrics[k] for k in ("n", "accuracy", "macro_auc", "model_version")}
    )
    console.print(f"written to {out}")


def export_openvino(
    model: ModelFile = None,
    cache: Annotated[
        Path | None, typer.Option(help="OpenVINO cache folder (default: PULMO_OPENVINO_CACHE).")
    ] = None,
) -> None:
    """Convert the model to OpenVINO IR ahead of time (air-gapped sites, container images)."""
    from pulmoscreen.model import export_openvino as export_ir
    from pulmoscreen.model import load_screening_model

    setup_logging(False)
    settings = get_settings()
    loaded = load_screening_model(
        model or settings.resolved_model_path(),
        labels=LABELS,
        thresholds_override=settings.thresholds,
    )
    ir = export_ir(loaded, cache or settings.resolved_openvino_cache())
    console.print(f"model {loaded.card.version} (sha256 {loaded.card.sha256[:12]}) -> {ir}")


def pack_data(
    data: LabelledFolders,
    out: Annotated[Path, typer.Option(help="Destination: <source>/<label>/<name>.jpg.")],
    size: Annotated[int, typer.Option(help="Side of the square copies, pixels.")] = 224,
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 85,
) -> None:
    """Make a compact grey-JPEG copy of training folders (for a GPU host)."""
    from training.pack import pack_folders

    total = pack_folders(data, out, size=size, quality=quality)
    console.print(f"{total / 1e6:.1f} MB written to {out}")
