"""Labelled images from ``<label>/<file>`` folders, patient keys, and patient-disjoint splits."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pulmoscreen.domain import LABELS
from pulmoscreen.storage import sha256_file

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""})
SPLITS = ("train", "val", "test")

# File-name conventions that reveal the patient (several images per patient must share a split).
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # Kermany: person123_bacteria_456
    re.compile(r"^(\d{8})_\d{3}$"),  # NIH ChestX-ray14: 00001280_004
    re.compile(r"^(.*IM-\d{4})-\d{4}$"),  # Kermany normals: IM-0115-0001, NORMAL2-IM-1427-0001
)


def population(source: str) -> str:
    """``children`` for a paediatric collection (named so), else ``adults``."""
    name = source.lower()
    return "children" if "pediatric" in name or "paediatric" in name else "adults"


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: str
    source: str
    patient: str
    sha256: str


def patient_key(source: str, path: Path) -> str:
    """The patient an image belongs to, from its file name; the file itself when unknown."""
    stem = path.stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return f"{source}:{match.group(1)}"
    return f"{source}:{path.parent.name}/{stem}"


def discover(roots: Iterable[Path]) -> list[Sample]:
    """Every image under ``root/<label>/`` for each root; the root's name is the source.

    Folders named after anything but a known label are ignored.
    """
    samples = []
    for root in roots:
        for label in LABELS:
            folder = root / label
            if not folder.is_dir():
                continue
            samples.extend(
                Sample(path, label, root.name, patient_key(root.name, path), sha256_file(path))
                for path in sorted(folder.rglob("*"))
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            )
    return samples


def _groups(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices grouped by patient, with groups merged when they share identical content."""
    parent = list(range(len(samples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_by_key: dict[str, int] = {}
    for i, s in enumerate(samples):
        for key in (f"patient:{s.patient}", f"sha:{s.sha256}"):
            if key in first_by_key:
                parent[find(i)] = find(first_by_key[key])
            else:
                first_by_key[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(samples)):
        groups[find(i)].append(i)
    return list(groups.values())


def split_samples(
    samples: Sequence[Sample],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """Patient-disjoint train/val/test split, stratified by (source, label).

    Images of one patient, and byte-identical images, always land in the same split.
    """
    strata: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
    for group in _groups(samples):
        first = samples[group[0]]
        strata[(first.source, first.label)].append(group)
    rng = np.random.default_rng(seed)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for key in sorted(strata):
        groups = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        total = sum(len(g) for g in groups)
        targets = {"test": fractions[2] * total, "val": fractions[1] * total}
        placed = dict.fromkeys(SPLITS, 0)
        for group in groups:
            split = _choose_split(placed, targets, len(group), n_groups=len(groups))
            out[split].extend(samples[i] for i in group)
            placed[split] += len(group)
    check_disjoint(out)
    return out


def _choose_split(
    placed: dict[str, int], targets: dict[str, float], size: int, *, n_groups: int
) -> str:
    """Test, then validation, until each holds its share; every split gets a patient once a
    stratum has three."""
    for name in ("test", "val"):
        if n_groups >= 3 and placed[name] == 0:
            return name
        if placed[name] + size / 2 <= targets[name]:
            return name
    return "train"


def check_disjoint(splits: dict[str, list[Sample]]) -> None:
    """Raise if a patient or an identical image appears in two splits."""
    seen: dict[str, str] = {}
    for split, items in splits.items():
        for s in items:
            for key in (f"patient {s.patient}", f"content {s.sha256}"):
                other = seen.setdefault(key, split)
                if other != split:
                    raise ValueError(f"{key} is in both {other} and {split}")
