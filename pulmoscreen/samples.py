"""The demo's sample drop folder: the real RG1 chest CR, synthetic chests and broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydicom.uid import RLELossless

from pulmoscreen.synthetic import make_cxr_dicom


def _pydicom_data_file(name: str) -> Path | None:
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
    except (ImportError, ValueError, OSError):
        return None
    return Path(found) if found else None


def build_demo_folder(inbox: Path) -> list[str]:
    """Fill ``inbox`` with sample files; returns notes on what was put there."""
    inbox.mkdir(parents=True, exist_ok=True)
    notes = []
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        src = _pydicom_data_file(name)
        if src is None:
            notes.append(f"{name} not available (install pydicom-data): skipped")
            continue
        shutil.copyfile(src, inbox / f"real_chest_{name}")
    notes.append("real chest CR RG1 (uncompressed and JPEG 2000 lossless) from pydicom-data")
    site = inbox / "SITE_A" / "STUDY_1"
    make_cxr_dicom(site, seed=1, filename="synthetic_pa.dcm")
    make_cxr_dicom(
        site,
        seed=2,
        photometric="MONOCHROME1",
        bits_stored=16,
        modality="DX",
        filename="synthetic_mono1_16bit",
        ViewPosition="AP",
    )
    make_cxr_dicom(inbox, seed=3, transfer_syntax=RLELossless, filename="synthetic_rle.dcm")
    make_cxr_dicom(inbox, seed=4, filename="lateral_view.dcm", ViewPosition="LL")
    whole = make_cxr_dicom(inbox, seed=5, filename="truncated.dcm")
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])
    (inbox / "notes.dcm").write_text("this is not a DICOM file\n")
    notes.append(
        "synthetic chests (MONOCHROME1/2, 12/16-bit, RLE), a lateral view, "
        "a truncated file and a non-DICOM file"
    )
    return notes
