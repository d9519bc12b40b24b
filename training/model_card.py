"""MODEL_CARD.md: the model card as a person reads it."""

from __future__ import annotations

from typing import Any

from pulmoscreen.model import ModelCard

INTENDED_USE = (
    "A second reader for chest radiographs of adults in screening programmes (tuberculosis "
    "and pneumonia case finding): it ranks and flags images for a clinician's review. It does "
    "not make a diagnosis and must not be used to rule disease out on its own."
)

OLD_OOD_LIMITATION = (
    "Images that are not chest radiographs (drawn phantoms, other body parts that pass the "
    "header checks) still get an answer, often a confident one: the model has no "
    "out-of-distribution detector."
)
LIMITATIONS = [
    "No ImageNet weights could be used: the backbone was trained from scratch on a few thousand "
    "public images at 128 px, and fine-tuned from there. Expect lower accuracy than published "
    "pretrained models, and small findings to be missed at this resolution.",
    "Source tracks label: most pneumonia images are paediatric (Kermany, one hospital, "
    "children aged 1-5), and of the tuberculosis collections only Shenzhen holds normals from "
    "the same hospital. A model can learn 'child vs adult' or 'which scanner' instead of "
    "disease: read the figures on sources never trained on (leave-one-source-out), per "
    "source and per population, not the pooled ones.",
    "The figures on a source never trained on are the best estimate here of a new hospital, "
    "and they are lower than the same-source test figures. Settings were chosen by the "
    "held-out Shenzhen figures themselves, among a few candidates, which makes that figure "
    "slightly optimistic. Validate locally (on the programme's own labelled sample) before use.",
    "Adult pneumonia is represented by only ~160 noisy NIH images (text-mined labels); "
    "performance on adult pneumonia is the least certain.",
    "Thresholds were chosen on the validation split so that the lower confidence bound of the "
    "sensitivity reaches the target (see the threshold rule); the realised sensitivity on new "
    "data still varies with equipment and population, and specificity pays for the margin.",
    "Not evaluated on lateral views, children in a TB programme, or images with devices.",
    OLD_OOD_LIMITATION,
]
CONTENT_LIMITATION = (
    "The content check (its section above) refuses what does not look like a frontal chest "
    "radiograph as stored; it was calibrated on these sources and measured on a few dozen "
    "non-chest files only, and its settings were chosen after looking at those figures. "
    "Lateral chests without ViewPosition, abdomens and chests with heavy hardware were not "
    "measured; the files it let through are listed in its section."
)


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


def _auc(metrics: dict[str, Any], label: str) -> str:
    return _fmt(metrics.get("per_class", {}).get(label, {}).get("auc"))


def _held_out_sections(d: dict[str, Any]) -> list[str]:
    """Sources a model never saw: this model's own (``held_out``) and the leave-one-source-out
    runs that stand for this recipe at a new hospital (``leave_one_source_out``)."""
    lines: list[str] = []
    adapted = d.get("held_out_site_adapted") or {}
    rows = []
    for source, m in (d.get("held_out") or {}).items():
        rows.append((source, "this model", m))
        if source in adapted:
            rows.append((source, "this model, site-adapted", adapted[source]))
    for source, m in (d.get("leave_one_source_out") or {}).items():
        rows.append((source, m["model_version"], m))
        if m.get("site_adapted"):
            rows.append((source, f"{m['model_version']}, site-adapted", m["site_adapted"]))
    if not rows:
        return lines
    lines += [
        "",
        "## Sources never trained on (leave-one-source-out)",
        "",
        "Each source below was left out of training entirely and evaluated whole: the nearest "
        "thing here to a hospital the model never saw. A source holding one class only has no AUC. "
        "*Site-adapted*: the early stages' BatchNorm statistics re-estimated on the site's own "
        "unlabelled images (`pulmoscreen adapt`); the source halved at random, each half scored "
        "by the model adapted on the other half.",
        "",
        "| held-out source | model | images | TB AUC | TB sens. | TB spec. | pneumonia AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, model, m in rows:
        tb = m["per_class"]["tuberculosis"]
        lines.append(
            f"| {source} | {model} | {m['n']} | {_auc(m, 'tuberculosis')} | "
            f"{_fmt(tb['sensitivity'])} | {_fmt(tb['specificity'])} | {_auc(m, 'pneumonia')} |"
        )
    return lines


def _audit_section(d: dict[str, Any]) -> list[str]:
    """The source probe for this model and the one it started from, and that model's AUCs."""
    probe = (d.get("test_metrics") or {}).get("source_probe")
    start = d.get("starting_model") or {}
    if not probe and not start:
        return []
    lines = [
        "",
        "## Shortcut audit",
        "",
        "Accuracy of a linear probe (5-fold) that tells which source a *normal adult* test image "
        "came from, using the model's penultimate features; lower is better, chance is the "
        "largest source's share.",
        "",
        "| model | probe accuracy | chance | normals per source |",
        "|---|---|---|---|",
    ]
    for name, found in (
        ("this model", probe),
        (start.get("version"), start.get("test", {}).get("source_probe")),
    ):
        if found:
            lines.append(
                f"| {name} | {_fmt(found['accuracy'])} | {_fmt(found['chance'])} | "
                f"{', '.join(f'{k}: {v}' for k, v in found['sources'].items())} |"
            )
    if start:
        lines += [
            "",
            f"The starting model ({start.get('version')}) on this run's images, per source:",
            "",
            "| images | source | TB AUC | pneumonia AUC |",
            "|---|---|---|---|",
        ]
        for split in ("test", "held_out"):
            for source, aucs in (start.get(split, {}).get("per_source_auc") or {}).items():
                lines.append(
                    f"| {split.replace('_', ' ')} | {source} | {_fmt(aucs.get('tuberculosis'))} | "
                    f"{_fmt(aucs.get('pneumonia'))} |"
                )
    return lines


def _negatives_text(figures: dict[str, Any]) -> str:
    negatives = figures.get("negatives") or {}
    files = negatives.get("files", [])
    return (
        f"{negatives.get('images', 'n/a')} crops, turns and low-resolution versions of "
        f"{len(files)} pydicom-data images (CT, MR, US, screen captures, a segmentation), none "
        "of them in the corpus below"
    )


def _content_section(card: ModelCard) -> list[str]:
    """The content check: version, thresholds, false rejects per source, the corpus verdicts."""
    check = card.content_check
    if check is None:
        return []
    f = check.figures
    lines = [
        "",
        "## Content check",
        "",
        f"`{check.version}` refuses an image (`not_chest_content`) when it lies far from the "
        "chest classes in the model's own features (distance threshold "
        f"{check.ood_threshold:.1f}), looks turned by 90 degrees (p(rotated) threshold "
        f"{check.rotation_threshold:.3f})"
        + (
            ", or looks like the images of other modalities and body parts it was shown "
            f"(p(not a chest radiograph) threshold {check.other_threshold:.3f}; "
            f"{_negatives_text(f)})"
            if check.other_weights is not None
            else ""
        )
        + "; every part comes from the same forward pass as the probabilities. Fitted "
        f"{f.get('fitted', 'n/a')} on {f.get('split', 'n/a')}, at a false-reject target of "
        f"{_fmt(f.get('false_reject_target_per_part'))} per part; measured on "
        f"{f.get('backend', 'n/a')}.",
        "",
        "| chest images refused | "
        + " | ".join(f"{s}" for s in f.get("test_chest_false_reject", {}).get("per_source", {}))
        + " |",
        "|---|" + "---|" * len(f.get("test_chest_false_reject", {}).get("per_source", {})),
    ]
    for role in ("val", "test"):
        per = f.get(f"{role}_chest_false_reject", {}).get("per_source", {})
        cells = " | ".join(f"{v['refused']:.1%} of {v['images']}" for v in per.values())
        lines.append(f"| {role} split | {cells} |")
    rotated = f.get("test_rotated_90_270_refused", {}).get("all")
    if rotated is not None:
        lines += ["", f"Test chests turned by 90 or 270 degrees refused: {rotated:.1%}."]
    corpus = f.get("corpus", {})
    if corpus:
        lines += ["", "| file | kind | score | verdict |", "|---|---|---|---|"]
        for name, row in corpus.items():
            right = row["refused"] == (row["kind"] == "not_chest")
            verdict = ("refused" if row["refused"] else "passes") + ("" if right else " (wrong)")
            lines.append(f"| {name} | {row['kind']} | {row['score']:.2f} | {verdict} |")
    return lines


def render_model_card(card: ModelCard) -> str:
    """Markdown for ``card``, with test metrics overall and per source when present."""
    d = card.details
    lines = [f"# Model card: {card.version}", "", "## Intended use", ""]
    lines += [d.get("intended_use", INTENDED_USE), *_model_section(card)]
    lines += _training_section(d)
    lines += _thresholds_section(d)
    lines += _held_out_sections(d)
    lines += _test_section(d)
    lines += _audit_section(d)
    lines += _content_section(card)
    limitations = list(d.get("limitations", LIMITATIONS))
    if card.content_check is not None:
        limitations = [CONTENT_LIMITATION if x == OLD_OOD_LIMITATION else x for x in limitations]
    lines += ["", "## Limitations", ""]
    lines += [f"- {item}" for item in limitations]
    lines += ["", "Data: see `../shared/data/README.md` for sources and licences.", ""]
    return "\n".join(lines)


def _model_section(card: ModelCard) -> list[str]:
    d = card.details
    training = d.get("training", {})
    rule = d.get("threshold_rule", "")
    return [
        "",
        "## Model",
        "",
        f"- Architecture: {d.get('arch', 'resnet50')} with a softmax head over "
        f"{', '.join(card.labels)}; initialisation: {training.get('init', 'n/a')}.",
        *(
            f"- {role.replace('_', ' ')}: model {version}."
            for role, version in d.get("lineage", {}).items()
        ),
        f"- Input: display pixels -> area resize to {card.preprocess.size} px"
        f"{_crop_words(card.preprocess.crop)}, per-image "
        f"percentile clip {card.preprocess.clip_percentiles} -> 0..255"
        f"{', CLAHE' if card.preprocess.equalize == 'clahe' else ''}, grey repeated into "
        f"{card.preprocess.channels} channels (`to_model_input`, the same code as serving).",
        f"- Flag thresholds: {', '.join(f'{k} {v:.4f}' for k, v in card.thresholds.items())}. "
        f"{rule[:1].upper()}{rule[1:]}.",
        f"- Abnormality score: {d.get('abnormality_score', 'round(100 * (1 - p(normal)))')}.",
        f"- Created {d.get('created', 'n/a')}; weights stored as float16 (compact file).",
    ]


def _crop_words(crop: float) -> str:
    return f", centre crop ({crop:.0%} of the side trimmed from each edge)" if crop else ""


def _training_section(d: dict[str, Any]) -> list[str]:
    lines = ["", "## Training", ""]
    lines += [f"- {k}: {v}" for k, v in d.get("training", {}).items() if k != "data"]
    lines += ["", "| split | images per source/label |", "|---|---|"]
    for split, counts in d.get("data_counts", {}).items():
        lines.append(f"| {split} | {', '.join(f'{k}: {v}' for k, v in counts.items())} |")
    history = d.get("history", [])
    if history:
        lines += [
            "",
            f"Precision: {d.get('precision', 'float32')}. Training images per second include"
            " the first epoch's compilation.",
            "",
            "| epoch | loss | accuracy | val loss | val accuracy | training img/s |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {h['epoch']} | {_fmt(h.get('loss'))} | {_fmt(h.get('accuracy'))} | "
            f"{_fmt(h.get('val_loss'))} | {_fmt(h.get('val_accuracy'))} | "
            f"{_rate(h.get('images_per_s'))} |"
            for h in history
        ]
    return lines


def _rate(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else "n/a"


def _thresholds_section(d: dict[str, Any]) -> list[str]:
    validation = d.get("threshold_validation")
    if not validation:
        return []
    return [
        "",
        "## Thresholds on the validation split",
        "",
        "| disease | positives | sensitivity | lower bound | confidence | specificity |",
        "|---|---|---|---|---|---|",
        *(
            f"| {disease} | {v['n']} | {_fmt(v['sensitivity'])} | "
            f"{_fmt(v['sensitivity_lower_bound'])} | {_fmt(v['confidence'])} | "
            f"{_fmt(v['specificity'])} |"
            for disease, v in validation.items()
        ),
    ]


def _test_section(d: dict[str, Any]) -> list[str]:
    metrics = d.get("test_metrics")
    if not metrics:
        return []
    lines = ["", "## Held-out test split", "", *_metrics_table(metrics)]
    for name, m in metrics.get("per_population", {}).items():
        lines += ["", f"### Population: {name}", "", *_metrics_table(m)]
    for source, m in metrics.get("per_source", {}).items():
        lines += ["", f"### Source: {source}", "", *_metrics_table(m)]
    return lines
