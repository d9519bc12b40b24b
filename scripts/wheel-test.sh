#!/usr/bin/env bash
# The wheel works with no source tree: build it, install it into a fresh virtualenv under a
# temporary folder, and from there run `pulmoscreen migrate` and `pulmoscreen screen` on SQLite
# with the sample chest X-rays the package ships. The screen must score with the shipped model
# (the card's version in the database), not the untrained network.
#
# WHEEL_TEST_DEPS=venv (default): the fresh virtualenv takes its third-party packages from the
# project's .venv through a .pth line (that folder's own .pth files, the editable install's
# among them, are not processed); pulmoscreen itself comes from the wheel, which is checked.
# WHEEL_TEST_DEPS=pip: pip installs the wheel with all its dependencies, as a site would.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROJECT_PYTHON="$ROOT/.venv/bin/python"
DEPS="${WHEEL_TEST_DEPS:-venv}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pulmoscreen-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
started=$SECONDS

step() { printf '\n== wheel-test [%ss] %s\n' "$((SECONDS - started))" "$*"; }

step "copy the files git knows (tracked, or new and not ignored) to $WORK/src"
# A copy keeps stale build/ folders and local state out of the wheel and writes nothing here.
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) \
    | (cd "$ROOT" && "$PROJECT_PYTHON" -c '
import os, shutil, sys
dest = sys.argv[1]
for name in sys.stdin.buffer.read().decode().split("\0"):
    if name and os.path.isfile(name):  # a tracked file deleted in the tree is not copied
        os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
        shutil.copy2(name, os.path.join(dest, name))
' "$WORK/src")

step "build the wheel"
"$PROJECT_PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
wheel=("$WORK"/dist/pulmoscreen-*.whl)
ls -l "${wheel[0]}"

step "fresh virtualenv $WORK/venv (dependencies: $DEPS)"
"$PROJECT_PYTHON" -m venv --without-pip "$WORK/venv"
PY="$WORK/venv/bin/python"
if [[ "$DEPS" == venv ]]; then
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    "$PROJECT_PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
        >"$site/project-venv-dependencies.pth"
    "$PROJECT_PYTHON" -m pip --python "$PY" install --quiet --no-deps "${wheel[0]}"
else
    "$PROJECT_PYTHON" -m pip --python "$PY" install --quiet "${wheel[0]}"
fi

# Everything from here runs outside the source tree, with no setting from the caller's shell.
mkdir -p "$WORK/run"
cd "$WORK/run"
for name in $(env | sed -n 's/^\(PULMO_[A-Z0-9_]*\)=.*/\1/p'); do unset "$name"; done
export PULMO_DATABASE_URL="sqlite:///$WORK/run/screen.db" PULMO_DATA_DIR="$WORK/run/var"
export WHEEL_TEST_VENV="$WORK/venv" TF_CPP_MIN_LOG_LEVEL=2

step "the package, its migrations and its model come from the fresh virtualenv"
"$PY" - <<'EOF'
import importlib.util
import os
from pathlib import Path

import pulmoscreen
from pulmoscreen.config import get_settings
from pulmoscreen.db.session import MIGRATIONS_DIR

venv = Path(os.environ["WHEEL_TEST_VENV"]).resolve()
model = get_settings().resolved_model_path()
for what, path in [("pulmoscreen", pulmoscreen.__file__), ("migrations", MIGRATIONS_DIR),
                   ("model", model)]:
    print(f"{what}: {path}")
    assert path is not None and Path(path).resolve().is_relative_to(venv), f"{what} not installed"
assert (MIGRATIONS_DIR / "env.py").is_file() and any((MIGRATIONS_DIR / "versions").glob("0*.py"))
for name in ("migrations", "models"):  # generic names another package may want
    assert importlib.util.find_spec(name) is None, f"a top-level {name!r} package is installed"
assert model.with_suffix(".card.json").is_file(), "the model's card is not beside it"
EOF

step "pulmoscreen migrate"
"$WORK/venv/bin/pulmoscreen" migrate

step "alembic upgrade head with alembic.ini alone, as the images' migrate service runs it"
cp "$ROOT/alembic.ini" .
PULMO_DATABASE_URL="sqlite:///$WORK/run/alembic.db" "$PY" -m alembic upgrade head
"$PY" -c 'import sqlite3; assert sqlite3.connect("alembic.db").execute(
    "SELECT version_num FROM alembic_version").fetchone(), "alembic built no schema"'

step "pulmoscreen screen (the sample chest X-rays the package ships)"
"$PY" - <<'EOF'
import shutil
from pathlib import Path

from pulmoscreen.samples import SAMPLE_DATA

Path("inbox").mkdir()
for path in sorted(SAMPLE_DATA.glob("*.dcm")):
    shutil.copyfile(path, Path("inbox") / path.name)
EOF
COLUMNS=160 "$WORK/venv/bin/pulmoscreen" screen inbox --timeout 600

step "every image was scored by the shipped model (the card's version), none by another"
"$PY" - "$ROOT/models/pulmoscreen_resnet50.card.json" <<'EOF'
import json
import os
import sqlite3
import sys

card = json.loads(open(sys.argv[1]).read())
db = sqlite3.connect(os.environ["PULMO_DATABASE_URL"].removeprefix("sqlite:///"))
images = db.execute("SELECT count(*) FROM images").fetchone()[0]
scored = db.execute(
    "SELECT m.version, m.trained, count(*) FROM predictions p JOIN models m ON m.id = p.model_id"
    " GROUP BY m.version, m.trained"
).fetchall()
print(f"{images} images; predictions by model: {scored}")
assert images >= 4, "the sample chest X-rays were not all received"
assert scored == [(card["version"], 1, images)], f"expected {images} by {card['version']}"
EOF

step "passed"
