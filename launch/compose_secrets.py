"""``python -m launch.compose_secrets DIR``: the secrets of a compose deployment, made on its first start.

``docker compose up`` runs this once before Redis, the nodes and the producers (the ``secrets-init``
service), so a fresh checkout needs no ``.env``. Into ``DIR`` (the ``secrets`` volume) it writes:

- ``streamfan_secret``: signs conversation tokens (nodes read it as ``STREAMFAN_SECRET_FILE``);
- ``redis_password``: Redis' AUTH password (health checks and ``redis-cli`` read it);
- ``redis.conf``: ``requirepass`` and ``masterauth`` with that password (``redis-server`` reads it);
- ``redis_url``: ``redis://:<password>@<STREAMFAN_REDIS_HOST>:6379/0`` (``REDIS_URL_FILE``).

A secret set in the environment (``STREAMFAN_SECRET``, ``REDIS_PASSWORD``: from ``.env``) is written
as given; otherwise the one already in the volume is kept, and only a missing one is generated
(``secrets.token_hex(32)``). The URL and Redis' config are rewritten every start, so the same volume
serves the standalone Redis and the cluster. ``docker compose down -v`` deletes them all.
"""

import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

# A password Redis' config file and a URL carry without quoting: what token_hex makes, and more.
_PLAIN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


def _secret(directory: Path, name: str, given: str) -> str:
    """The secret ``name``: ``given`` when set, else the one in ``directory``, else a new one."""
    path = directory / name
    if given:
        return given
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    return secrets.token_hex(32)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader sees the old file or the new one, never half of one.

    Readable by every user: the volume is mounted only into the services that use these, and each
    image runs its process as its own user (redis, streamfan)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.chmod(0o644)
    partial.replace(path)


def make(directory: Path, env: Mapping[str, str]) -> None:
    """Write the secrets, the URL and Redis' config into ``directory`` (see the module's docstring)."""
    signing = _secret(directory, "streamfan_secret", env.get("STREAMFAN_SECRET", "").strip())
    password = _secret(directory, "redis_password", env.get("REDIS_PASSWORD", "").strip())
    if not _PLAIN.fullmatch(password):
        raise SystemExit(
            "compose_secrets: REDIS_PASSWORD must be 16-512 characters of A-Z a-z 0-9 . _ ~ + / = -"
            " (e.g. openssl rand -hex 32)"
        )
    host = env.get("STREAMFAN_REDIS_HOST", "").strip() or "redis"
    _write(directory / "streamfan_secret", signing + "\n")
    _write(directory / "redis_password", password + "\n")
    _write(directory / "redis.conf", f"requirepass {password}\nmasterauth {password}\n")
    _write(directory / "redis_url", f"redis://:{quote(password, safe='')}@{host}:6379/0\n")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m launch.compose_secrets DIR")
    directory = Path(args[0])
    directory.mkdir(parents=True, exist_ok=True)
    make(directory, os.environ)
    print(f"compose_secrets: secrets ready in {directory}")


if __name__ == "__main__":
    main()
