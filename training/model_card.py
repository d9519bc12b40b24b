"""MODEL_CARD.md: the model card as a person reads it."""

from __future__ import annotations

from typing import Any

from pulmoscreen.model import ModelCard

INTENDED_USE = (
    "A second reader for chest radiographs of adults in screening programmes (tuberculosis "
    "and pneumonia case finding): it ranks and flags images for a clinician's review. It does "
    "not make a diagnosis and must not be used to rule disease out on its own."
)

LIMITATIONS = [
    "Trained from scratch (ImageNet weights were not available) on about 4,800 images at "
    "reduced resolution: expect lower accuracy than published pretrained models.",
    "Source tracks label: most pneumonia images are paediatric (Kermany, one hospital, "
    "children aged 1-5) and every tuberculosis image comes from adult TB collections. The model "
    "can learn 'child vs adult' or 'which scanner' instead of disease; the per-source figures "
    "below show how it does inside each source.",
    "The overall tuberculosis specificity is carried by the paediatric images, which the model "
    "tells apart from adult TB images easily. Among adults it flags most images without TB "
    "for review: read the specificity in the per-source tables, not the overall one.",
    "Adult pneumonia is represented by only ~160 noisy NIH images (text-mined labels); "
    "performance on adult pneumonia is the least certain.",
    "Test images come from the same sources as training images (patient-disjoint split): "
    "figures on a new site, scanner or population will be lower. Validate locally before use.",
    "Thresholds were chosen on the validation split so that the lower confidence bound of the "
    "sensitivity reaches the target (see the threshold rule); the realised sensitivity on new "
    "data still varies with equipment and population, and specificity pays for the margin.",
    "Not evaluated on lateral views, children in a TB programme, or images with devices.",
    "Images that are not chest radiographs (drawn phantoms, other body parts that pass the "
    "header checks) still get an answer, often a confident one: the model has no "
    "out-of-distribution detector.",
]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    lines = [
        f"Images: {metrics['n']}; accuracy {_fmt(metrics['accuracy'])}; macro AUC "
        f"{_fmt(metrics['macro_auc'])}; expected calibration error "
        f"{_fmt(metrics.get('expected_calibration_error'))}.",
        "",
        "| class | n | AUC | sensitivity | specificity | threshold |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in metrics["per_class"].items():
        lines.append(
            f"| {label} | {m['n']} | {_fmt(m['auc'])} | {_fmt(m['sensitivity'])} | "
            f"{_fmt(m['specificity'])} | {_fmt(m['threshold'])} |"
        )
    return lines


def render_model_card(card: ModelCard) -> str:
    """Markdown for ``card``, with test metrics overall and per source when present."""
    d = card.details
    training = d.get("training", {})
    rule = d.get("threshold_rule", "")
    lines = [
        f"# Model card: {card.version}",
        "",
        "## Intended use",
        "",
        d.get("intended_use", INTENDED_USE),
        "",
        "## Model",
        "",
        f"- Architecture: {d.get('arch', 'resnet50')} with a softmax head over "
        f"{', '.join(card.labels)}; initialisation: {training.get('init', 'n/a')}.",
        *(
            f"- {role.replace('_', ' ')}: model {version}."
            for role, version in d.get("lineage", {}).items()
        ),
        f"- Input: display pixels -> area resize to {card.preprocess.size} px, per-image "
        f"percentile clip {card.preprocess.clip_percentiles} -> 0..255, grey repeated into "
        f"{card.preprocess.channels} channels (`to_model_input`, the same code as serving).",
        f"- Flag thresholds: {', '.join(f'{k} {v:.4f}' for k, v in card.thresholds.items())}. "
        f"{rule[:1].upper()}{rule[1:]}.",
        f"- Abnormality score: {d.get('abnormality_score', 'round(100 * (1 - p(normal)))')}.",
        f"- Created {d.get('created', 'n/a')}; weights stored as float16 (compact file).",
        "",
        "## Training",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in training.items() if k != "data"]
    lines += ["", "| split | images per source/label |", "|---|---|"]
    for split, counts in d.get("data_counts", {}).items():
        lines.append(f"| {split} | {', '.join(f'{k}: {v}' for k, v in counts.items())} |")
    history = d.get("history", [])
    if history:
        lines += [
            "",
            "| epoch | loss | accuracy | val loss | val accuracy |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {h['epoch']} | {_fmt(h.get('loss'))} | {_fmt(h.get('accuracy'))} | "
            f"{_fmt(h.get('val_loss'))} | {_fmt(h.get('val_accuracy'))} |"
            for h in history
        ]
    validation = d.get("threshold_validation")
    if validation:
        lines += [
            "",
            "## Thresholds on the validation split",
            "",
            "| disease | positives | sensitivity | lower bound | confidence | specificity |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {disease} | {v['n']} | {_fmt(v['sensitivity'])} | "
            f"{_fmt(v['sensitivity_lower_bound'])} | {_fmt(v['confidence'])} | "
            f"{_fmt(v['specificity'])} |"
            for disease, v in validation.items()
        ]
    metrics = d.get("test_metrics")
    if metrics:
        lines += ["", "## Held-out test split", "", *_metrics_table(metrics)]
        for source, m in metrics.get("per_source", {}).items():
            lines += ["", f"### Source: {source}", "", *_metrics_table(m)]
    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in d.get("limitations", LIMITATIONS)]
    lines += ["", "Data: see `../shared/data/README.md` for sources and licences.", ""]
    return "\n".join(lines)
