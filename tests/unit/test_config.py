"""Settings refuse database and broker URLs whose password is unfit to deploy with, and name
the closest setting for a ``PULMO_*`` variable that is none."""

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from pulmoscreen.config import (
    MIN_REMOTE_PASSWORD,
    Settings,
    refuse_weak_password,
    unknown_setting_messages,
)

STRONG = "9b1e4f7a2c8d5e3b6a0f1c4d7e2a9b5c"


class TestRefuseWeakPassword:
    @pytest.mark.parametrize(
        "url",
        [
            "sqlite:///var/pulmoscreen.db",
            "memory://",
            "postgresql://postgres@127.0.0.1:5432/postgres",  # the integration tests' server
            "postgresql://pulmo@localhost/pulmoscreen",
            "postgresql:///pulmoscreen",  # Unix socket
            "postgresql://pulmo@/pulmoscreen?host=/var/run/postgresql",
            "redis://127.0.0.1:6379/2",
            "redis://[::1]:6379/0",
            "redis://:short@127.0.0.1:6379/0",
        ],
    )
    def test_a_local_server_may_have_no_or_a_short_password(self, url):
        assert refuse_weak_password(url) == url

    @pytest.mark.parametrize(
        "url",
        [
            f"postgresql://pulmo_app:{STRONG}@postgres:5432/pulmoscreen",
            f"postgresql+psycopg://pulmo_app:{STRONG}@10.0.0.5/pulmoscreen",
            f"redis://:{STRONG}@redis:6379/0",
            f"redis://default:{STRONG}@hub.example.org:6379/0",
        ],
    )
    def test_a_long_random_password_passes(self, url):
        assert refuse_weak_password(url) == url

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://pulmo_app:change-me@postgres:5432/pulmoscreen",
            "postgresql://pulmo_app:Change_Me_To_Something_Long@postgres/pulmoscreen",
            "redis://:changeme@127.0.0.1:6379/0",  # refused on this machine too
            "postgresql://postgres:postgres@localhost/pulmoscreen",
            "redis://:PASSWORD@redis:6379/0",
        ],
    )
    def test_a_placeholder_is_refused_everywhere(self, url):
        with pytest.raises(ValueError, match="placeholder"):
            refuse_weak_password(url)

    @pytest.mark.parametrize(
        "url",
        [
            "redis://redis:6379/0",
            "redis://:@redis:6379/0",
            "postgresql://pulmo_app@postgres:5432/pulmoscreen",
            "postgresql://pulmo_app:@/pulmoscreen?host=db.example.org",
        ],
    )
    def test_a_remote_server_without_a_password_is_refused(self, url):
        with pytest.raises(ValueError, match="empty"):
            refuse_weak_password(url)

    def test_a_remote_password_needs_the_minimum_length_once_decoded(self):
        short = "a%40" * (MIN_REMOTE_PASSWORD // 2 - 1)  # "a@" repeated: decodes shorter
        assert len(short) >= MIN_REMOTE_PASSWORD
        with pytest.raises(ValueError, match=f"shorter than {MIN_REMOTE_PASSWORD}"):
            refuse_weak_password(f"redis://:{short}@redis:6379/0")
        just = "x" * MIN_REMOTE_PASSWORD
        assert refuse_weak_password(f"redis://:{just}@redis:6379/0")


class TestSettingsPasswords:
    def test_a_weak_broker_password_in_the_environment_stops_startup(self, monkeypatch):
        monkeypatch.setenv("PULMO_BROKER_URL", "redis://:tooshort1@redis:6379/0")
        with pytest.raises(ValidationError, match="broker_url") as refused:
            Settings()
        # The error says what is wrong, and never shows the password itself.
        assert "tooshort1" not in str(refused.value)

    def test_a_placeholder_database_password_stops_startup(self):
        with pytest.raises(ValidationError, match="placeholder") as refused:
            Settings(database_url="postgresql://pulmo_app:change-me@postgres/pulmoscreen")
        assert "change-me" not in str(refused.value)


class TestUnknownSettings:
    """A mistyped ``PULMO_*`` name would do nothing: it is logged with the closest setting."""

    LOGGER = "pulmoscreen.config"

    @pytest.fixture(autouse=True)
    def _no_pulmo_variables(self, monkeypatch):
        """Only the names a test sets: none from the shell that runs the tests."""
        for name in list(os.environ):
            if name.upper().startswith("PULMO_"):
                monkeypatch.delenv(name)

    def test_an_unknown_name_in_the_environment_is_named_with_the_closest_setting(
        self, monkeypatch, caplog
    ):
        monkeypatch.setenv("PULMO_DROPFOLDER", "/data/inbox")
        with caplog.at_level(logging.WARNING, logger=self.LOGGER):
            settings = Settings(_env_file=None)
        assert settings.drop_folder == Path("var/inbox")  # the mistake changed nothing...
        assert caplog.messages == [  # ...and says so
            "PULMO_DROPFOLDER in the environment is not a setting; did you mean PULMO_DROP_FOLDER?"
        ]

    def test_an_unknown_name_in_the_env_file_is_named_with_the_file(
        self, tmp_path, monkeypatch, caplog
    ):
        env_file = tmp_path / ".env"
        env_file.write_text("PULMO_BATCH_SIZE=8\nPULMO_INFERENCE_BAKEND=keras\nHUB_HOST=\n")
        monkeypatch.chdir(tmp_path)
        with caplog.at_level(logging.WARNING, logger=self.LOGGER):
            settings = Settings()
        assert settings.batch_size == 8
        assert caplog.messages == [
            "PULMO_INFERENCE_BAKEND in .env is not a setting; did you mean PULMO_INFERENCE_BACKEND?"
        ]

    def test_known_names_other_names_and_the_test_suites_names_pass_quietly(
        self, tmp_path, monkeypatch, caplog
    ):
        for name, value in {
            "PULMO_STABLE_SECONDS": "0.5",
            "pulmo_site_timezone": "Africa/Nairobi",  # names are not case-sensitive
            "DEPLOY_DROP_DIR": "./var/inbox",
            "PULMO_TEST_REDIS_URL": "redis://127.0.0.1:6379/3",
            "PULMO_FAULT_STUDIES": "50",
        }.items():
            monkeypatch.setenv(name, value)
        (tmp_path / "quiet.env").write_text("PULMO_REPORT_TIME=03:00\nREDIS_PASSWORD=\n")
        with caplog.at_level(logging.WARNING, logger=self.LOGGER):
            settings = Settings(_env_file=tmp_path / "quiet.env")
        assert (settings.stable_seconds, settings.site_timezone) == (0.5, "Africa/Nairobi")
        assert settings.report_time == "03:00"
        assert caplog.messages == []

    def test_compose_variables_of_an_older_env_file_say_their_new_name(self):
        assert unknown_setting_messages(
            ["PULMO_DROP_DIR", "PULMO_GPU_BATCH_SIZE"], Settings.model_fields, where=".env"
        ) == [
            "PULMO_DROP_DIR in .env is not a setting; docker compose reads DEPLOY_DROP_DIR "
            "instead: rename it",
            "PULMO_GPU_BATCH_SIZE in .env is not a setting; docker compose reads "
            "DEPLOY_GPU_BATCH_SIZE instead: rename it",
        ]

    def test_a_name_like_no_setting_is_reported_as_ignored(self):
        assert unknown_setting_messages(
            ["PULMO_ZZZ", "PATH"], Settings.model_fields, where="the environment"
        ) == ["PULMO_ZZZ in the environment is not a setting and is ignored"]
