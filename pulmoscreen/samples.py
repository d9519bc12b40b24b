"""The demo's sample drop folder: real chest radiographs, non-chest and lying files, broken
files."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from pulmoscreen.imaging import read_dicom
from pulmoscreen.synthetic import chest_phantom, make_cxr_dicom

# real chest X-rays shipped with the package (see sample_data/ATTRIBUTION.md)
SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"


def pydicom_data_file(name: str) -> Path | None:
    """A file of the ``pydicom-data`` package (a development dependency), or None without it."""
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
    except (ImportError, ValueError, OSError):
        return None
    return Path(found) if found else None


def _small(pixels: NDArray[np.float32], side: int = 512) -> NDArray[np.float32]:
    """Display pixels at ``side`` px on the long edge: the demo's derived files stay small."""
    scale = side / max(pixels.shape)
    size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def _real_chests(inbox: Path) -> list[str]:
    notes = []
    for path in sorted(SAMPLE_DATA.glob("*.dcm")):
        shutil.copyfile(path, inbox / f"real_chest_{path.name}")
    notes.append("real chest X-rays: NIH ChestX-ray14 and Kermany (CC BY 4.0), see ATTRIBUTION.md")
    rg1 = pydicom_data_file("RG1_UNCR.dcm")
    if rg1 is None:
        return [*notes, "RG1 not available (install pydicom-data): skipped"]
    shutil.copyfile(rg1, inbox / "real_chest_RG1_UNCR.dcm")
    notes.append("real chest CR RG1 from pydicom-data")
    return notes


def _content_cases(inbox: Path) -> list[str]:
    """Files whose headers say chest, frontal, CR, but whose pixels are not."""
    rg1, rg3 = pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG3_UNCR.dcm")
    if rg1 is None or rg3 is None:
        return ["RG1/RG3 not available (install pydicom-data): no lying headers"]
    chest = _small(read_dicom(rg1).pixels)
    hand = _small(read_dicom(rg3, validate=False).pixels)
    shutil.copyfile(rg3, inbox / "extremity_RG3.dcm")  # its header says EXTREMITY
    lying = inbox / "LYING_HEADERS"
    make_cxr_dicom(lying, pixels=hand, seed=11, filename="extremity_says_chest_pa.dcm")
    make_cxr_dicom(lying, pixels=np.rot90(chest), seed=12, filename="chest_rotated_90.dcm")
    phantom = chest_phantom(512, 512, seed=13)
    make_cxr_dicom(lying, pixels=phantom, seed=13, filename="synthetic_phantom_says_chest.dcm")
    make_cxr_dicom(inbox, pixels=chest, seed=14, filename="lateral_view.dcm", ViewPosition="LL")
    return [
        "non-chest: RG3 (extremity CR) as it is, and re-wrapped with a CHEST/PA header; "
        "RG1 rotated by 90 degrees; a synthetic phantom labelled chest; a lateral view"
    ]


def build_demo_folder(inbox: Path) -> list[str]:
    """Fill ``inbox`` with sample files; returns notes on what was put there."""
    inbox.mkdir(parents=True, exist_ok=True)
    notes = _real_chests(inbox) + _content_cases(inbox)
    whole = make_cxr_dicom(inbox, seed=5, filename="truncated.dcm")
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])
    (inbox / "notes.dcm").write_text("this is not a DICOM file\n")
    notes.append("broken: a truncated file and a non-DICOM file")
    return notes
