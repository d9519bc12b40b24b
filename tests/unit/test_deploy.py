"""docker-compose.yml, its CPU override, .env.example and the Dockerfile agree with each other.

No Docker engine runs on the test machines, so the files are checked as data.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ONE_SHOT = {"migrate"}
SCALABLE = {"worker"}


class _ComposeLoader(yaml.SafeLoader):
    """Accepts compose's ``!reset`` and ``!override`` merge tags."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"__reset__": True})
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: loader.construct_mapping(node, deep=True)
)


def load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M))


class TestCompose:
    def test_expected_services(self, compose):
        assert set(compose["services"]) >= {
            "redis",
            "postgres",
            "migrate",
            "ingest",
            "worker",
            "beat",
            "flower",
        }

    def test_every_service_has_a_healthcheck_or_is_one_shot(self, compose):
        for name, service in compose["services"].items():
            if name in ONE_SHOT:
                assert service["restart"] == "no", name
            else:
                assert "healthcheck" in service, name
                assert service.get("restart") in {"unless-stopped", "always"}, name

    def test_scalable_workers_have_no_fixed_name_or_host_port(self, compose):
        for name in SCALABLE:
            service = compose["services"][name]
            assert "container_name" not in service
            assert "ports" not in service

    def test_worker_reserves_a_gpu(self, compose):
        devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]

    def test_app_services_wait_for_the_migration(self, compose):
        for name in ("ingest", "worker", "beat"):
            depends = compose["services"][name]["depends_on"]
            assert depends["migrate"]["condition"] == "service_completed_successfully"
            assert depends["postgres"]["condition"] == "service_healthy"
        assert compose["services"]["migrate"]["command"] == ["alembic", "upgrade", "head"]

    def test_flower_is_bound_to_localhost(self, compose):
        for mapping in compose["services"]["flower"]["ports"]:
            assert mapping.startswith("127.0.0.1:")

    def test_build_targets_exist_in_the_dockerfile(self, compose):
        targets = dockerfile_targets()
        for name, service in compose["services"].items():
            if "build" in service:
                assert service["build"]["target"] in targets, name
        cpu = load("docker-compose.cpu.yml")
        assert cpu["services"]["worker"]["build"]["target"] in targets

    def test_hub_override_publishes_only_on_the_bind_address(self):
        hub = load("docker-compose.hub.yml")
        for service in hub["services"].values():
            for mapping in service["ports"]:
                assert mapping.startswith("${HUB_BIND_ADDRESS")

    def test_cpu_override_drops_the_gpu_reservation(self):
        cpu = load("docker-compose.cpu.yml")
        assert cpu["services"]["worker"]["deploy"] == {"__reset__": True}

    def test_variables_are_documented_in_env_example(self):
        used = set()
        for path in ROOT.glob("docker-compose*.yml"):
            text = path.read_text()
            used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
        documented = set(
            re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
        )
        assert used <= documented, used - documented

    def test_every_pulmo_variable_is_a_setting(self):
        """PulmoScreen warns about a PULMO_ name that is no setting: compose's own are DEPLOY_."""
        from pulmoscreen.config import Settings, unknown_setting_messages

        files = [".env.example", "Dockerfile", *(p.name for p in ROOT.glob("docker-compose*.yml"))]
        for name in files:
            found = re.findall(r"\bPULMO_[A-Z0-9_]+", (ROOT / name).read_text())
            assert found or name.startswith("docker-compose.hub"), name
            assert unknown_setting_messages(found, Settings.model_fields, where=name) == []

    def test_services_run_commands_that_exist(self, compose):
        """Celery apps and CLI subcommands named in compose are importable / defined."""
        import importlib

        from typer.main import get_command

        from pulmoscreen.cli import app

        subcommands = set(get_command(app).commands)
        for name, service in compose["services"].items():
            command = service.get("command") or []
            if command[:1] == ["pulmoscreen"]:
                assert command[1] in subcommands, name
            if command[:2] == ["celery", "-A"]:
                assert importlib.util.find_spec(command[2]) is not None, name
            test = service.get("healthcheck", {}).get("test", [])
            if test[:2] == ["CMD", "pulmoscreen"]:
                assert test[2] in subcommands, name


class TestDockerfile:
    def test_targets_and_non_root_user(self):
        text = (ROOT / "Dockerfile").read_text()
        assert {"runtime", "worker-gpu"} <= dockerfile_targets()
        for stage in text.split("\nFROM ")[1:]:
            name = stage.split()[2] if len(stage.split()) > 2 else ""
            if name in {"runtime", "worker-gpu"}:
                assert "\nUSER pulmo" in stage, name

    def test_dockerignore_keeps_local_state_out(self):
        ignored = (ROOT / ".dockerignore").read_text().split()
        assert {".git", ".venv", "var", ".env"} <= set(ignored)


# ---- privileges: who connects as whom, and which passwords the stack refuses ----
APP_SERVICES = {"migrate", "ingest", "worker", "beat", "reporter"}
PASSWORD_VARIABLES = {"POSTGRES_PASSWORD", "APP_DB_PASSWORD", "REDIS_PASSWORD"}
INIT_SCRIPT = "docker/postgres/10-app-role.sh"
STRONG = "3f9c2a7e5b1d4c8a9e0f6b2d7a4c1e8f"  # what `openssl rand -hex 16` prints


class ComposeRefusedError(Exception):
    """docker compose would stop here: a required variable is empty."""


def interpolate(value: str, env: dict[str, str], *, strict: bool = True) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (unless not strict), ``$$``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        got = env.get(name, "")
        if op == ":?" and not got and strict:
            raise ComposeRefusedError(f"{name}: {arg}")
        return got or (arg if op == ":-" else "")

    pattern = r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}"
    return "$".join(re.sub(pattern, one, part) for part in value.split("$$"))


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", text, re.M))


def app_url(compose: dict, name: str, env: dict[str, str], key: str, *, strict: bool = True) -> str:
    return interpolate(compose["services"][name]["environment"][key], env, strict=strict)


class TestPrivileges:
    def test_app_services_connect_as_the_app_role_not_the_superuser(self, compose):
        env = {"APP_DB_USER": "pulmo_app", "APP_DB_PASSWORD": STRONG, "REDIS_PASSWORD": STRONG}
        for name in APP_SERVICES:
            environment = compose["services"][name]["environment"]
            url = environment["PULMO_DATABASE_URL"]
            assert "POSTGRES_USER" not in url, name
            assert "POSTGRES_PASSWORD" not in url, name
            assert app_url(compose, name, env, "PULMO_DATABASE_URL").startswith(
                f"postgresql://pulmo_app:{STRONG}@"
            ), name
            # env_file passes every line of .env; the superuser's password must not reach the app.
            assert environment.get("POSTGRES_PASSWORD") == "", name
        cpu = load("docker-compose.cpu.yml")["services"]["worker"].get("environment", {})
        assert not {"PULMO_DATABASE_URL", "PULMO_BROKER_URL", "POSTGRES_PASSWORD"} & set(cpu)

    def test_postgres_creates_a_least_privileged_app_role_on_first_start(self, compose):
        postgres = compose["services"]["postgres"]
        mount = f"./{INIT_SCRIPT}:/docker-entrypoint-initdb.d/10-app-role.sh:ro"
        assert mount in postgres["volumes"]
        for variable in ("APP_DB_USER", "APP_DB_PASSWORD"):
            assert variable in postgres["environment"]
        with pytest.raises(ComposeRefusedError):
            interpolate(postgres["environment"]["APP_DB_PASSWORD"], {})
        script = (ROOT / INIT_SCRIPT).read_text()
        role = re.search(r"ALTER ROLE :\"app_user\" WITH ([^;]*);", script)
        assert role is not None
        assert set(role.group(1).split()) >= {
            "LOGIN",
            "NOSUPERUSER",
            "NOCREATEDB",
            "NOCREATEROLE",
            "NOREPLICATION",
            "NOBYPASSRLS",
        }
        # PostgreSQL <= 14 lets every role create tables in schema public; 15+ does not.
        assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC;" in script

    def test_env_example_passwords_are_refused_by_compose_and_by_the_app(self, compose):
        from pydantic import ValidationError

        from pulmoscreen.config import Settings

        example = env_example()
        assert set(example) >= PASSWORD_VARIABLES
        for variable in PASSWORD_VARIABLES:
            assert example[variable] == "", f"{variable} ships a value that would start the stack"
        for path in ROOT.glob("docker-compose*.yml"):
            for name, op in re.findall(r"\$\{([A-Z_]*PASSWORD)(:\?|:-|-|\?|\})", path.read_text()):
                assert op == ":?", f"{path.name}: ${{{name}}} has no required-value check"
        for name in APP_SERVICES:
            for key in ("PULMO_DATABASE_URL", "PULMO_BROKER_URL"):
                with pytest.raises(ComposeRefusedError):
                    app_url(compose, name, example, key)
                # Started some other way, with the same values, the services refuse to run.
                field = key.removeprefix("PULMO_").lower()
                with pytest.raises(ValidationError, match="password"):
                    Settings(**{field: app_url(compose, name, example, key, strict=False)})

    @pytest.mark.parametrize("password", ["change-me", "CHANGE_ME_please_1234", "s3cret!"])
    def test_the_app_refuses_a_placeholder_or_short_password(self, compose, password):
        from pydantic import ValidationError

        from pulmoscreen.config import Settings

        env = env_example() | dict.fromkeys(PASSWORD_VARIABLES, password)
        for key in ("PULMO_DATABASE_URL", "PULMO_BROKER_URL"):
            url = app_url(compose, "worker", env, key)
            field = key.removeprefix("PULMO_").lower()
            with pytest.raises(ValidationError, match="password"):
                Settings(**{field: url})
        strong = env_example() | dict.fromkeys(PASSWORD_VARIABLES, STRONG)
        Settings(
            database_url=app_url(compose, "worker", strong, "PULMO_DATABASE_URL"),
            broker_url=app_url(compose, "worker", strong, "PULMO_BROKER_URL"),
        )

    def test_redis_requires_a_password_and_every_client_sends_it(self, compose):
        redis = compose["services"]["redis"]
        assert '--requirepass "$$REDISCLI_AUTH"' in " ".join(redis["command"])
        # redis-cli (the health check) authenticates from REDISCLI_AUTH.
        with pytest.raises(ComposeRefusedError):
            interpolate(redis["environment"]["REDISCLI_AUTH"], {})
        env = env_example() | {"REDIS_PASSWORD": STRONG}
        for name in APP_SERVICES:
            assert app_url(compose, name, env, "PULMO_BROKER_URL") == (
                f"redis://:{STRONG}@redis:6379/0"
            ), name
        flower = compose["services"]["flower"]
        assert not any(arg.startswith("--broker") for arg in flower["command"])
        assert interpolate(flower["environment"]["CELERY_BROKER_URL"], env) == (
            f"redis://:{STRONG}@redis:6379/0"
        )

    def test_hub_publishes_redis_and_postgres_only_with_passwords(self, compose):
        hub = load("docker-compose.hub.yml")
        assert {"redis", "postgres"} <= set(hub["services"])
        for service in hub["services"].values():
            # The override only adds ports: the password settings of the base file stay in force.
            assert set(service) == {"ports"}
        assert "--requirepass" in " ".join(compose["services"]["redis"]["command"])
        # Workers on GPU hosts reach the hub through HUB_HOST with the same credentials.
        env = env_example() | {
            "APP_DB_PASSWORD": STRONG,
            "REDIS_PASSWORD": STRONG,
            "HUB_HOST": "10.0.0.5",
        }
        assert app_url(compose, "worker", env, "PULMO_BROKER_URL") == (
            f"redis://:{STRONG}@10.0.0.5:6379/0"
        )
        assert app_url(compose, "worker", env, "PULMO_DATABASE_URL") == (
            f"postgresql://pulmo_app:{STRONG}@10.0.0.5:5432/pulmoscreen"
        )
