"""PulmoScreen: batch screening of chest X-ray DICOMs, a second reader, never a diagnosis."""

__version__ = "0.1.0"
