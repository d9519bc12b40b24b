#!/usr/bin/env bash
# The DICOM result tests validate every SR and Secondary Capture with dciodvfy (Debian's
# dicom3tools package). Install it when it is missing; fail with a clear message when that is
# impossible.
set -u
DCIODVFY=${PULMO_TEST_DCIODVFY:-dciodvfy}
if command -v "$DCIODVFY" >/dev/null 2>&1; then
  exit 0
fi
echo "dciodvfy is not installed: installing Debian's dicom3tools package"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends dicom3tools
if ! command -v "$DCIODVFY" >/dev/null 2>&1; then
  echo "ERROR: could not install dicom3tools (apt-get install dicom3tools), or set PULMO_TEST_DCIODVFY." >&2
  exit 1
fi
echo "dciodvfy: $(command -v "$DCIODVFY")"
