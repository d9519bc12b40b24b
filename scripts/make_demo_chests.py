"""Write the demo's real chest radiographs (pulmoscreen/sample_data/) from ../shared/data.

Test-split images only (the split the shipped model was trained with): the model never saw
them, and the content check neither fitted nor set a threshold on them. NIH ChestX-ray14 adults
at 320 px, Kermany paediatric at 256 px (the smallest size the worker accepts; the source is
224 px), wrapped as JPEG 2000 lossless CR with a synthetic patient and UIDs. Run from the
project root: ``.venv/bin/python scripts/make_demo_chests.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
from pydicom.uid import JPEG2000Lossless

from pulmoscreen.model.card import ModelCard
from pulmoscreen.synthetic import make_cxr_dicom
from training.dataset import discover
from training.train import make_splits

DATA = Path("../shared/data/cxr")
OUT = Path("pulmoscreen/sample_data")
PICKS = (  # (source, label, size, count)
    ("nih_adult_512", "normal", 320, 1),
    ("nih_adult_512", "pneumonia", 320, 1),
    ("kermany_pediatric_224", "normal", 256, 1),
    ("kermany_pediatric_224", "pneumonia", 256, 1),
)


def main() -> None:
    card = ModelCard.load(Path("models/pulmoscreen_resnet50.card.json"))
    training = card.details["training"]
    roots = [Path(p) for p in training["data"]]
    test = make_splits(discover(roots), hold_out=[], seed=training["seed"])["test"]
    OUT.mkdir(parents=True, exist_ok=True)
    with (DATA / "nih_adult_512" / "manifest.csv").open() as fh:
        nih_view = {Path(row["file"]).name: row["view"] for row in csv.DictReader(fh)}
    written = []
    for n, (source, label, size, count) in enumerate(PICKS):
        chosen = sorted(
            (s for s in test if s.source == source and s.label == label), key=lambda s: s.path.name
        )[:count]
        for k, sample in enumerate(chosen):
            grey = cv2.imread(str(sample.path), cv2.IMREAD_GRAYSCALE)
            small = cv2.resize(
                grey,
                (size, size),
                interpolation=cv2.INTER_AREA if size < grey.shape[0] else cv2.INTER_CUBIC,
            )
            name = f"{source.split('_')[0]}_{label}_{k + 1}.dcm"
            make_cxr_dicom(
                OUT,
                pixels=small,
                bits_stored=8,
                seed=9000 + 10 * n + k,
                transfer_syntax=JPEG2000Lossless,
                filename=name,
                PatientID=f"DEMO{n}{k}",
                PatientName=f"Demo^{source}",
                ViewPosition=nih_view.get(sample.path.name, "AP"),
            )
            written.append(
                {
                    "file": name,
                    "source": source,
                    "label": label,
                    "original": str(sample.path.relative_to(DATA)),
                    "sha256_original": sample.sha256,
                }
            )
    (OUT / "sources.json").write_text(json.dumps(written, indent=2) + "\n")


if __name__ == "__main__":
    main()
