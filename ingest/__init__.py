"""Drop-folder ingest: stability, header validation, dedupe, quarantine, enqueue."""

from ingest.scanner import StabilityTracker, iter_candidates
from ingest.service import Ingestor, IngestOutcome

__all__ = ["IngestOutcome", "Ingestor", "StabilityTracker", "iter_candidates"]
