from pathlib import Path

import cv2
import numpy as np
import pytest

from training.dataset import Sample, check_disjoint, discover, patient_key, split_samples


class TestPatientKey:
    @pytest.mark.parametrize(
        ("name", "patient"),
        [
            ("person1000_bacteria_2931.jpeg", "k:person1000"),
            ("person1000_virus_1681.jpeg", "k:person1000"),
            ("00001280_004.jpg", "k:00001280"),
            ("IM-0115-0001.jpeg", "k:IM-0115"),
            ("NORMAL2-IM-1427-0001.jpeg", "k:NORMAL2-IM-1427"),
            ("tuberculosis-10000.jpg", "k:tuberculosis/tuberculosis-10000"),
        ],
    )
    def test_patterns(self, name, patient):
        assert patient_key("k", Path("tuberculosis") / name) == patient


def sample(i: int, *, patient: str, label: str = "normal", sha: str | None = None) -> Sample:
    return Sample(Path(f"{label}/{i}.png"), label, "src", patient, sha or f"sha{i}")


class TestSplitSamples:
    def test_patient_disjoint_and_stratified(self):
        samples = [
            sample(i, patient=f"p{i // 3}", label=("normal", "pneumonia")[i % 2])
            for i in range(300)
        ]
        splits = split_samples(samples, seed=1)
        patients = {name: {s.patient for s in items} for name, items in splits.items()}
        assert not patients["train"] & patients["val"]
        assert not patients["train"] & patients["test"]
        assert not patients["val"] & patients["test"]
        assert sum(len(v) for v in splits.values()) == 300
        assert 190 <= len(splits["train"]) <= 230
        for items in splits.values():
            labels = {s.label for s in items}
            assert labels == {"normal", "pneumonia"}

    def test_identical_images_of_different_patients_share_a_split(self):
        samples = [
            sample(i, patient=f"p{i}", sha="same" if i in (3, 77) else None) for i in range(100)
        ]
        splits = split_samples(samples, seed=2)
        where = {s.path.name: name for name, items in splits.items() for s in items}
        assert where["3.png"] == where["77.png"]

    def test_check_disjoint_raises(self):
        with pytest.raises(ValueError, match="patient p1"):
            check_disjoint({"train": [sample(1, patient="p1")], "test": [sample(2, patient="p1")]})


class TestDiscover:
    def test_labels_from_folders(self, tmp_path):
        root = tmp_path / "siteA"
        for label in ("normal", "tuberculosis", "other"):
            (root / label).mkdir(parents=True)
            cv2.imwrite(str(root / label / "a.png"), np.zeros((8, 8), np.uint8))
        found = discover([root])
        assert sorted(s.label for s in found) == ["normal", "tuberculosis"]
        assert {s.source for s in found} == {"siteA"}


class TestSampleWeights:
    """Hand-computed: weights are n / (k * n_group), so every group sums to n / k."""

    def samples(self, groups):
        return [
            Sample(Path(f"{source}/{label}/{i}.png"), label, source, f"p{i}", f"s{i}")
            for i, (source, label) in enumerate(groups)
        ]

    def test_class_balance(self):
        from training.train import sample_weights

        labels = np.array([0, 0, 0, 2])  # 3 normal, 1 tuberculosis; pneumonia absent
        got = sample_weights(
            self.samples([("a", "normal")] * 3 + [("b", "tuberculosis")]), labels, "class"
        )
        np.testing.assert_allclose(got, [4 / 9, 4 / 9, 4 / 9, 4 / 3])

    def test_group_balance_weighs_each_source_label_pair_equally(self):
        from training.train import sample_weights

        groups = [("kermany", "pneumonia")] * 6 + [("nih", "pneumonia")] * 2 + [("tb", "normal")]
        labels = np.array([1] * 8 + [0])
        got = sample_weights(self.samples(groups), labels, "group")
        np.testing.assert_allclose(got, [0.5] * 6 + [1.5] * 2 + [3.0])
        assert got[:6].sum() == pytest.approx(got[6:8].sum()) == pytest.approx(got[8])

    def test_unknown_balance_is_refused(self):
        from training.train import sample_weights

        with pytest.raises(ValueError, match="balance"):
            sample_weights(self.samples([("a", "normal")]), np.array([0]), "source")

    def test_group_balance_with_a_per_epoch_cap_is_not_applied_twice(self):
        """Capped at 2 per epoch, the 6-image group is already down to 2: weighted as 2."""
        from training.train import sample_weights

        groups = [("kermany", "pneumonia")] * 6 + [("nih", "pneumonia")] * 2 + [("tb", "normal")]
        labels = np.array([1] * 8 + [0])
        got = sample_weights(self.samples(groups), labels, "group", cap=2)
        drawn = np.array([2 / 6] * 6 + [1.0] * 3)  # chance each image is in an epoch
        per_group = [(got * drawn)[:6].sum(), (got * drawn)[6:8].sum(), (got * drawn)[8]]
        np.testing.assert_allclose(per_group, [5 / 3] * 3)

    def test_class_balance_with_a_cap_counts_what_an_epoch_holds(self):
        from training.train import sample_weights

        groups = [("a", "normal")] * 6 + [("b", "tuberculosis")] * 2
        labels = np.array([0] * 6 + [2] * 2)
        got = sample_weights(self.samples(groups), labels, "class", cap=2)
        np.testing.assert_allclose(got, [4 / 6] * 6 + [4 / 6] * 2)


def test_a_held_out_source_the_starting_model_saw_is_refused(tmp_path):
    """A leave-one-source-out run from a model that trained on that source measures nothing
    held out: it is refused before any fit."""
    import pytest

    from pulmoscreen.domain import LABELS
    from pulmoscreen.model import ModelCard, card_path_for
    from training.train import TrainConfig, check_init_unseen, sources_seen_by

    model = tmp_path / "m.npz"
    model.write_bytes(b"")
    ModelCard(
        version="m",
        labels=LABELS,
        thresholds={},
        details={
            "training": {"data": ["d/kermany", "d/shenzhen_128"], "hold_out": []},
            "sources_seen": ["nih"],
        },
    ).save(card_path_for(model))
    assert sources_seen_by(model) == {"kermany", "shenzhen_128", "nih"}
    config = TrainConfig(
        data=(tmp_path / "shenzhen_128",),
        out=tmp_path / "run",
        init=str(model),
        hold_out=("shenzhen_128",),
    )
    with pytest.raises(ValueError, match="was trained on"):
        check_init_unseen(config)
    averaged = TrainConfig(
        data=(tmp_path / "shenzhen_128",),
        out=tmp_path / "run",
        average_with=model,
        hold_out=("shenzhen_128",),
    )
    with pytest.raises(ValueError, match=r"--average-with .* was trained on"):
        check_init_unseen(averaged)
    check_init_unseen(TrainConfig(data=(tmp_path,), out=tmp_path / "r", init=str(model)))
    held_out_there = ModelCard(
        version="h",
        labels=LABELS,
        thresholds={},
        details={"training": {"data": ["d/shenzhen_128"], "hold_out": ["shenzhen_128"]}},
    )
    held_out_there.save(card_path_for(model))
    assert sources_seen_by(model) == set()
    check_init_unseen(config)  # that model never saw it: allowed


def test_weight_average_is_the_running_mean_and_resumes_from_its_file(tmp_path):
    from training.train import WeightAverage

    rng = np.random.default_rng(0)
    snapshots = [[rng.normal(size=(3, 2)), rng.normal(size=4)] for _ in range(5)]
    first = WeightAverage(tmp_path / "swa.npz")
    for weights in snapshots[:3]:
        first.add(weights)
    first.save()
    resumed = WeightAverage(tmp_path / "swa.npz")
    assert resumed.count == 3
    for weights in snapshots[3:]:
        resumed.add(weights)
    like = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
    got = resumed.weights(like)
    assert [g.dtype for g in got] == [np.float32, np.float32]
    for i in range(2):
        np.testing.assert_allclose(got[i], np.mean([s[i] for s in snapshots], axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="no weights"):
        WeightAverage(tmp_path / "none.npz").weights(like)


def test_a_model_trained_at_another_size_starts_a_run_at_the_run_size(tmp_path):
    """``--init`` a 32 px model with ``--size 48``: the same weights, rebuilt at 48 px, so a
    model trained at 128 px can start a fit at 224 px."""
    from pulmoscreen.domain import LABELS
    from pulmoscreen.model.build import build_tiny_model
    from training.train import load_trained

    small = build_tiny_model(LABELS, input_size=32)
    path = tmp_path / "small.keras"
    small.save(path)
    same = load_trained(path, size=32, arch="tiny")
    assert same.input_shape[1:3] == (32, 32)
    bigger = load_trained(path, size=48, arch="tiny")
    assert bigger.input_shape[1:3] == (48, 48)
    for got, want in zip(bigger.get_weights(), small.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    image = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    assert bigger.predict(image, verbose=0).shape == (2, len(LABELS))
