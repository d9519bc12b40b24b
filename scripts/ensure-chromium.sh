#!/usr/bin/env bash
# The report tests render the HTML summary in headless Chromium (Debian's `chromium` package).
# Install it when it is missing; fail with a clear message when that is impossible.
set -u
CHROMIUM=${PULMO_TEST_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
echo "Chromium is not installed at $CHROMIUM: installing Debian's chromium package"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
if [ ! -x "$CHROMIUM" ]; then
  echo "ERROR: could not install chromium (apt-get install chromium), or set PULMO_TEST_CHROMIUM." >&2
  exit 1
fi
echo "chromium: $($CHROMIUM --version 2>/dev/null)"
