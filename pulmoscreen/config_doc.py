"""docs/configuration.md, written from ``Settings``: run ``make docs`` after changing a field.

``python -m pulmoscreen.config_doc [PATH]`` writes the page (default ``docs/configuration.md``).
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pulmoscreen.config import REPO_ROOT, Settings

DOC_PATH = REPO_ROOT / "docs" / "configuration.md"
REGENERATE = "make docs"

HEADER = f"""\
# Configuration

<!-- Generated from Settings (pulmoscreen/config.py) by `{REGENERATE}`; do not edit by hand. -->

Every setting is an environment variable with the prefix `PULMO_`, or a line `NAME=value` in a
`.env` file in the working folder; the environment wins over `.env`. Names are not
case-sensitive. Other names are ignored, but a `PULMO_` name that is no setting is logged as a
warning with the closest setting's name, so a typing mistake does not pass silently
(`PULMO_TEST_*` and `PULMO_FAULT_*` belong to the test suites and are not checked). docker
compose's own variables start with `DEPLOY_` ([deploy.md](deploy.md)).

"""

_TYPE_NAMES = {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}


def _type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``path``, ``integer``, ``one of ...``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return " or ".join(_type_name(arg) for arg in inner) + " (may be unset)"
    if origin is dict:
        return f"JSON object of {_type_name(args[1])}s"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    """The field's numeric constraints, e.g. ``≥ 1, ≤ 512``."""
    parts = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, dict):
        return f"`{value}`" if value else "`{}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_configuration() -> str:
    """The Markdown page: one table row per ``Settings`` field, in declaration order."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = [
        "| variable | type | default | what it does |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        if bounds:
            kind = f"{kind}, {bounds}"
        description = field.description or ""
        rows.append(
            f"| `{prefix}{name.upper()}` | {_cell(kind)} | {_cell(_default(field))} "
            f"| {_cell(description)} |"
        )
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the page to the path given (default ``docs/configuration.md``)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DOC_PATH
    path.write_text(render_configuration(), encoding="utf-8")


if __name__ == "__main__":
    main()
