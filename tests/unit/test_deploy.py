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
