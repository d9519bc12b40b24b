import cv2
import numpy as np

from tests.factories import make_cxr_dicom
from training.dataset import discover
from training.pack import pack_folders


class TestPackFolders:
    def test_compact_copy_keeps_labels_sources_and_patients(self, tmp_path):
        src = tmp_path / "siteA"
        (src / "pneumonia").mkdir(parents=True)
        cv2.imwrite(
            str(src / "pneumonia" / "person7_virus_1.png"),
            np.random.default_rng(0).integers(0, 255, (300, 400), np.uint8),
        )
        make_cxr_dicom(src / "normal", seed=3, filename="person8_scan.dcm")
        out = tmp_path / "packed"
        total = pack_folders([src], out, size=64)
        copies = discover([out / "siteA"])
        originals = discover([src])
        assert total == sum(p.stat().st_size for p in out.rglob("*.jpg"))
        assert sorted((s.label, s.patient) for s in copies) == sorted(
            (s.label, s.patient) for s in originals
        )
        image = cv2.imread(str(out / "siteA" / "normal" / "person8_scan.jpg"), cv2.IMREAD_GRAYSCALE)
        assert image.shape == (64, 64)
        assert image.max() > 200  # DICOM display range 0..1 was scaled to 0..255
