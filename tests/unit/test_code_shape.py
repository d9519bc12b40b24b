"""Shape rules of the code base that a reviewer would otherwise check by hand."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Product code: every package and script except the tests and Alembic's migrations.
PRODUCT = ("pulmoscreen", "ingest", "worker", "reporting", "training", "benchmarks", "scripts")
MAX_FUNCTION_LINES = 60


def long_functions(folders=PRODUCT, limit=MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > limit:
                        where = path.relative_to(ROOT)
                        found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


class TestFunctionLength:
    def test_no_product_function_is_over_sixty_lines(self):
        assert long_functions() == [], "split these functions"

    def test_a_long_function_is_found(self, tmp_path, monkeypatch):
        body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
        import tests.unit.test_code_shape as shape

        monkeypatch.setattr(shape, "ROOT", tmp_path)
        assert shape.long_functions(("pkg",)) == ["pkg/m.py:5 long (61 lines)"]


class TestLayersContract:
    def test_every_core_module_is_in_the_bottom_layer(self):
        """import-linter checks only the modules a layer names: a new module of the core that
        is not listed could import a service unseen."""
        import tomllib

        config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
        [layers] = [c for c in config["contracts"] if c["type"] == "layers"]
        listed = {name.strip() for name in layers["layers"][-1].split(":")}
        core = {
            f"pulmoscreen.{p.stem}"
            for p in (ROOT / "pulmoscreen").iterdir()
            if p.name != "__init__.py"
            and p.name != "cli"
            and (p.suffix == ".py" or (p / "__init__.py").exists())
        }
        assert core - listed == set(), "add these modules to the layers contract's last layer"
