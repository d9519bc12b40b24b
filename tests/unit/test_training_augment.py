import cv2
import numpy as np

from training.augment import AugmentSpec, jitter_plane
from training.train import epoch_order


def plane(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 2) * 200 + 20


class TestJitterPlane:
    def test_off_only_rescales_to_unit_range(self):
        x = plane()
        out = jitter_plane(x, AugmentSpec(acquisition_p=0.0), np.random.default_rng(0))
        np.testing.assert_allclose(out, (x - x.min()) / (x.max() - x.min()), atol=1e-6)

    def test_on_changes_the_image_within_range_and_repeats_with_the_seed(self):
        x, spec = plane(), AugmentSpec(acquisition_p=1.0)
        a = jitter_plane(x, spec, np.random.default_rng(1))
        b = jitter_plane(x, spec, np.random.default_rng(1))
        c = jitter_plane(x, spec, np.random.default_rng(2))
        assert a.shape == x.shape
        assert a.dtype == np.float32
        assert a.min() >= 0.0
        assert a.max() <= 1.0
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
        unit = (x - x.min()) / (x.max() - x.min())
        assert np.abs(a - unit).mean() > 0.01

    def test_transforms_can_be_switched_off_one_by_one(self):
        """With every transform but JPEG re-compression off, the output is a decoded 8-bit JPEG."""
        x = plane()
        spec = AugmentSpec(acquisition_p=1.0, gamma=0, contrast=0, blur_sigma=0, noise=0, rescale=0)
        out = jitter_plane(x, spec, np.random.default_rng(3))
        assert np.array_equal(out, np.round(out * 255) / 255)  # 8-bit, as decoded

    def test_spec_round_trips_and_ignores_unknown_keys(self):
        spec = AugmentSpec(acquisition_p=0.5, jpeg_quality=40)
        assert AugmentSpec.from_dict({**spec.to_dict(), "removed_option": 1}) == spec


class TestEpochOrder:
    def test_all_indices_once_without_a_cap(self):
        groups = np.array([0, 0, 0, 1, 1, 2])
        order = epoch_order(groups, 0, np.random.default_rng(0))
        assert sorted(order) == list(range(6))

    def test_cap_per_group_drawn_afresh_each_epoch(self):
        groups = np.repeat(np.arange(3), [100, 5, 40])
        rng = np.random.default_rng(0)
        first, second = epoch_order(groups, 10, rng), epoch_order(groups, 10, rng)
        for order in (first, second):
            assert len(order) == len(set(order.tolist())) == 25
            assert np.bincount(groups[order]).tolist() == [10, 5, 10]
        assert set(first.tolist()) != set(second.tolist())


class TestSourceMixing:
    """AugmentSpec.mix_sources: a training image blended with one of its label from another
    source, the label kept."""

    labels = np.array([0, 0, 0, 2, 2, 1, 1])
    sources = np.array([0, 1, 1, 0, 1, 0, 0])  # label 1 is held by source 0 only

    def test_partners_share_the_label_and_come_from_another_source(self):
        from training.augment import same_label_partners

        rng = np.random.default_rng(0)
        chosen = np.arange(len(self.labels))
        for _ in range(20):
            partners = same_label_partners(chosen, self.labels, self.sources, 1.0, rng)
            for i, j in zip(chosen, partners, strict=True):
                if self.labels[i] == 1:
                    assert j == -1  # no other source holds that label
                else:
                    assert self.labels[j] == self.labels[i]
                    assert self.sources[j] != self.sources[i]

    def test_probability_zero_draws_no_partner(self):
        from training.augment import same_label_partners

        chosen = np.arange(len(self.labels))
        rng = np.random.default_rng(0)
        partners = same_label_partners(chosen, self.labels, self.sources, 0.0, rng)
        assert (partners == -1).all()

    def test_a_blend_lies_between_the_two_planes_and_the_rest_stay(self):
        from training.augment import mix_with_partners

        pool = np.stack([plane(0), plane(1) * 3 + 500, plane(2)])  # another stored range
        unit = [(p - p.min()) / (p.max() - p.min()) for p in pool]
        out = mix_with_partners(pool[[0, 2]], pool, np.array([1, -1]), np.random.default_rng(3))
        np.testing.assert_array_equal(out[1], pool[2])
        # out[0] = w * unit[0] + (1 - w) * unit[1] for one w in (0, 1)
        w = np.linalg.lstsq((unit[0] - unit[1]).reshape(-1, 1), (out[0] - unit[1]).ravel())[0]
        assert 0.0 < w[0] < 1.0
        np.testing.assert_allclose(out[0], w[0] * unit[0] + (1 - w[0]) * unit[1], atol=1e-5)

    def test_batches_without_mixing_are_the_cached_planes(self):
        from training.train import batch_planes

        x = np.stack([plane(s) for s in range(4)])
        idx = np.array([1, 3])
        rng = np.random.default_rng(0)
        np.testing.assert_array_equal(
            batch_planes(x, np.zeros(4, np.int64), idx, None, rng), x[idx]
        )
        mixed = batch_planes(x, np.zeros(4, np.int64), idx, (np.arange(4), 1.0), rng)
        assert mixed.shape == x[idx].shape
        assert not np.allclose(mixed, x[idx])
