"""The migrations and the shipped model are found through the installed package.

`make wheel-test` proves the same from a built wheel in a fresh virtualenv; these checks run on
the editable install the tests use, and on the files that drive the packaging.
"""

import ast
import json
import re
from importlib import resources
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from pulmoscreen.config import DEFAULT_MODEL_PATH, Settings
from pulmoscreen.db.session import MIGRATIONS_DIR

ROOT = Path(__file__).resolve().parents[2]


def setup_py_mapping() -> dict[str, str]:
    """setup.py's INSIDE: package name -> top-level folder installed under that name."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSIDE":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no INSIDE mapping")


class TestMigrationsDir:
    def test_is_the_package_pulmoscreen_migrations(self):
        package = Path(str(resources.files("pulmoscreen.migrations")))
        assert package == MIGRATIONS_DIR
        assert (MIGRATIONS_DIR / "env.py").is_file()

    def test_alembic_ini_finds_the_same_scripts_from_any_folder(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        scripts = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
        assert Path(scripts.dir).resolve() == MIGRATIONS_DIR.resolve()
        assert scripts.get_current_head() is not None


class TestShippedModel:
    def test_default_model_is_the_package_pulmoscreen_shipped_model(self):
        folder = Path(str(resources.files("pulmoscreen.shipped_model")))
        shipped = folder / "pulmoscreen_resnet50.npz"
        assert shipped == DEFAULT_MODEL_PATH
        assert DEFAULT_MODEL_PATH.is_file()

    def test_served_with_no_settings_and_its_card_beside_it(self, monkeypatch):
        monkeypatch.delenv("PULMO_MODEL_PATH", raising=False)
        served = Settings(_env_file=None).resolved_model_path()
        assert served == DEFAULT_MODEL_PATH
        card = json.loads(DEFAULT_MODEL_PATH.with_suffix(".card.json").read_text())
        assert card["trained"] is True

    def test_model_path_setting_overrides_it(self, tmp_path, monkeypatch):
        monkeypatch.setenv("PULMO_MODEL_PATH", str(tmp_path / "site.npz"))
        assert Settings(_env_file=None).resolved_model_path() == tmp_path / "site.npz"


class TestPackagingFiles:
    def test_mapped_folders_are_the_top_level_ones(self):
        mapping = setup_py_mapping()
        assert mapping == {
            "pulmoscreen.migrations": "migrations",
            "pulmoscreen.shipped_model": "models",
        }
        for folder in mapping.values():
            assert (ROOT / folder / "__init__.py").is_file(), folder

    def test_dockerfile_dependency_step_has_a_marker_for_every_folder(self):
        """The dependencies install before the code is copied, from empty package markers:
        setup.py fails on a mapped folder that has none."""
        text = (ROOT / "Dockerfile").read_text()
        loop = re.search(r"for p in ([\w ]+); do", text)
        assert loop is not None
        expected = {"pulmoscreen", "ingest", "worker", "reporting", "training"}
        assert set(loop.group(1).split()) == expected | set(setup_py_mapping().values())

    def test_images_install_the_wheel_not_the_source_tree(self):
        text = (ROOT / "Dockerfile").read_text()
        assert "pip install --no-deps -e" not in text
        for stage in text.split("\nFROM ")[1:]:
            name = stage.split()[2] if len(stage.split()) > 2 else ""
            if name in {"runtime", "worker-gpu"}:
                assert "from=wheel" in stage, name
                assert not re.search(r"^COPY (--chown=\S+ )?\. \.$", stage, re.M), name
