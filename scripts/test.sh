#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the checks (format, lint, types, tests).
# Works on a fresh Debian/Ubuntu machine with Python 3.11+; run it as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The package starts a system redis on 6379; the tests never use it, they start their own.
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing Python dependencies"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

echo "==> ruff format --check, ruff check, mypy"
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy

echo "==> pytest"
set +e
.venv/bin/pytest -q -o timeout_method=thread "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
