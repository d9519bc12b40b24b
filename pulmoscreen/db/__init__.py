"""SQL storage: the ORM tables, sessions, migrations and the query functions services use."""

from pulmoscreen.db.schema import Base, Image, ModelRow, PredictionRow, Study
from pulmoscreen.db.session import make_engine, session_factory, upgrade_database

__all__ = [
    "Base",
    "Image",
    "ModelRow",
    "PredictionRow",
    "Study",
    "make_engine",
    "session_factory",
    "upgrade_database",
]
