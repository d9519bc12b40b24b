"""docs/configuration.md is what the generator writes from ``Settings``."""

import re

import pytest

from pulmoscreen.config import Settings
from pulmoscreen.config_doc import DOC_PATH, REGENERATE, main, render_configuration


class TestRenderConfiguration:
    def test_the_committed_page_is_current(self):
        if DOC_PATH.read_text(encoding="utf-8") != render_configuration():
            pytest.fail(
                f"docs/configuration.md differs from Settings in pulmoscreen/config.py: run "
                f"`{REGENERATE}` (python -m pulmoscreen.config_doc) and commit the page"
            )

    def test_every_setting_has_a_row_with_its_variable_and_description(self):
        page = render_configuration()
        for name, field in Settings.model_fields.items():
            assert field.description, f"{name} has no Field(description=...)"
            row = re.search(rf"^\| `PULMO_{name.upper()}` \|.*$", page, re.M)
            assert row is not None, name
            assert field.description.split()[0] in row.group(0), name

    def test_types_defaults_and_bounds_read_plainly(self):
        page = render_configuration()
        assert "| `PULMO_BATCH_SIZE` | integer, ≥ 1, ≤ 512 | `32` |" in page
        assert "| `PULMO_MODEL_PATH` | path (may be unset) |" in page
        assert "| `PULMO_INFERENCE_BACKEND` | one of `auto`, `keras`, `openvino` | `auto` |" in page
        assert "| `PULMO_DATABASE_URL` | text | empty |" in page


class TestMain:
    def test_writes_the_page_to_the_path_given(self, tmp_path):
        target = tmp_path / "configuration.md"
        main([str(target)])
        assert target.read_text(encoding="utf-8") == render_configuration()
