"""The part of the packaging that pyproject.toml cannot say: two folders renamed on install.

migrations/ (Alembic) and models/ (the shipped model) stay at the top of the source tree, but
install inside the package as ``pulmoscreen.migrations`` and ``pulmoscreen.shipped_model``: an
installed pulmoscreen finds its schema and its trained model without a source tree, and no
top-level ``migrations`` package lands in site-packages. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

INSIDE = {"pulmoscreen.migrations": "migrations", "pulmoscreen.shipped_model": "models"}
FOUND = find_namespace_packages(
    include=["pulmoscreen*", "ingest*", "worker*", "reporting*", "training*"],
    exclude=["*.__pycache__"],
)

setup(
    packages=[*FOUND, *INSIDE, "pulmoscreen.migrations.versions"],
    package_dir=INSIDE,
)
