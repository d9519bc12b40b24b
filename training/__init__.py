"""Training, evaluation and calibration of the screening model."""
