"""Nightly screening summary: aggregation, plots and HTML/PDF/CSV writers."""
