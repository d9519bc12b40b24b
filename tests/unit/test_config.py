"""Settings refuse database and broker URLs whose password is unfit to deploy with."""

import pytest
from pydantic import ValidationError

from pulmoscreen.config import MIN_REMOTE_PASSWORD, Settings, refuse_weak_password

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
