"""The `pulmoscreen` command's own wiring: train's options become the run's TrainConfig, and
TensorFlow's native start-up notices are kept back unless -v is given."""

import os
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from pulmoscreen.cli import app
from pulmoscreen.cli.models import train_config
from pulmoscreen.cli.terminal import quiet_native_logs
from training.augment import AugmentSpec
from training.train import TrainConfig


def parsed_train_options(*args: str) -> dict[str, Any]:
    """train's options as the command receives them (``ctx.params``), without running it."""
    train = get_command(app).commands["train"]
    return dict(train.make_context("train", ["--data", "d", "--out", "o", *args]).params)


class TestTrainConfig:
    def test_the_commands_defaults_are_the_runs_defaults(self):
        config = train_config(parsed_train_options(), imagenet_weights=None)
        assert config == TrainConfig(data=(Path("d"),), out=Path("o"))

    def test_each_option_reaches_its_field(self):
        options = parsed_train_options(
            *("--data", "e", "--epochs", "3", "--rotation", "5", "--acquisition", "0.3"),
            *("--no-flip", "--hold-out-source", "a", "--loso-run", "r", "--resume"),
        )
        config = train_config(options, imagenet_weights=Path("w.h5"))
        assert config.data == (Path("d"), Path("e"))
        assert config.epochs == 3
        assert config.augment == AugmentSpec(rotation_deg=5.0, flip=False, acquisition_p=0.3)
        assert config.hold_out == ("a",)
        assert config.loso_runs == (Path("r"),)
        assert config.imagenet_weights == Path("w.h5")


class TestQuietNativeLogs:
    @pytest.fixture(autouse=True)
    def unset_level(self, monkeypatch):
        # setenv first, so that the undo also removes what the function under test sets.
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "")
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")

    def test_without_verbose_only_fatal_errors_are_printed(self):
        quiet_native_logs(["screen", "inbox"])
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"

    @pytest.mark.parametrize("flag", ["-v", "--verbose"])
    def test_verbose_leaves_tensorflow_its_defaults(self, flag):
        quiet_native_logs(["screen", "inbox", flag])
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ

    def test_a_level_the_user_set_wins(self, monkeypatch):
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
        quiet_native_logs(["preview", "file.dcm"])
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_native_start_up_chatter_is_held_back_and_every_other_line_passes(capfd) -> None:
    import os

    from pulmoscreen.cli.terminal import IMPORT_CHATTER, native_stderr_filtered

    with native_stderr_filtered(IMPORT_CHATTER):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see\n")
        os.write(2, b"real failure: libcudart.so missing\n")
    assert capfd.readouterr().err == "real failure: libcudart.so missing\n"
