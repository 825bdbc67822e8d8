#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the checks (format, lint, types, tests).
# Works on a fresh Debian/Ubuntu machine with Python 3.11+; run it as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: Redis, nginx (the local cluster's balancer),
# docker-compose (validates docker-compose.yml; no Docker daemon needed) and Chromium (the page's
# end-to-end tests, driven by Playwright; no browser download), with an emoji font for screenshots.
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need_apt+=(fonts-noto-color-emoji)
# Node.js drives the JS clients (the openai package, the AI SDK's chat transport).
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The packages may start system services (redis on 6379, nginx on 80); the tests never use
  # them: they start their own servers on free loopback ports.
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing Python dependencies"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

echo "==> installing the JS clients the tests drive (tests/node, from its lock file)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

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
[ -d test-artifacts ] && echo "==> screenshots of the chat page: $(pwd)/test-artifacts/"
exit "$status"
