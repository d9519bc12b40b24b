import numpy as np

from training.audit import probe_accuracy


class TestProbeAccuracy:
    def test_features_that_carry_the_source_are_found(self):
        rng = np.random.default_rng(0)
        groups = ["a"] * 60 + ["b"] * 40
        features = rng.normal(size=(100, 16)).astype(np.float32)
        features[:60, 3] += 3.0  # source "a" shifts one feature
        assert probe_accuracy(features, groups) > 0.9

    def test_features_without_the_source_stay_near_chance(self):
        rng = np.random.default_rng(1)
        groups = ["a"] * 60 + ["b"] * 40
        features = rng.normal(size=(100, 16)).astype(np.float32)
        assert probe_accuracy(features, groups) < 0.72
