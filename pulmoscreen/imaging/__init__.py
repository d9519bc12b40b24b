"""Pure imaging: DICOM bytes in, display pixels and model input out (numpy, OpenCV, pydicom)."""

from pulmoscreen.imaging.dicom import (
    DicomImage,
    DicomMeta,
    FileChangedError,
    read_dicom,
    read_header,
    read_model_input,
)
from pulmoscreen.imaging.preprocess import PreprocessSpec, to_model_input

__all__ = [
    "DicomImage",
    "DicomMeta",
    "FileChangedError",
    "PreprocessSpec",
    "read_dicom",
    "read_header",
    "read_model_input",
    "to_model_input",
]
