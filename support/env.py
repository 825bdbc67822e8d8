"""Reading settings from environment variables, the same way in every process.

Each setting is declared once, as a dataclass field made by ``setting`` (its variable, default,
range and docstring side by side); ``read_settings`` reads them all. Bad values fail at start with
the variable's name, never later with a confusing error. The README's configuration table lists
every variable (a test holds it to that).
"""

from collections.abc import Callable, Mapping
from dataclasses import field, fields
from typing import Any, TypeVar

N = TypeVar("N", int, float)
T = TypeVar("T")
D = TypeVar("D")


class SettingsError(ValueError):
    """A setting from the environment is malformed or out of range."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default)


def env_secret(env: Mapping[str, str], name: str) -> str:
    """``name``'s value, else the contents of the file that ``name_FILE`` names ('' when neither is set).

    Docker's secrets convention: a secret kept in a file (a compose volume, a Docker or Kubernetes
    secret) never shows in ``docker inspect`` or the process's environment. The variable itself wins
    when both are set; surrounding whitespace (the file's final newline) is dropped.
    """
    value = env.get(name, "")
    path = env.get(f"{name}_FILE", "")
    if value or not path:
        return value
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}_FILE={path!r} cannot be read: {exc.__class__.__name__}") from None


def _env_number(
    env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], what: str, low: N, high: N
) -> N:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is outside {low}..{high}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return _env_number(env, name, default, int, "a whole number", low, high)


def env_float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    return _env_number(env, name, default, float, "a number", low, high)


def setting(default: T, env: str, *, low: float | None = None, high: float | None = None) -> T:
    """A dataclass field read from the variable ``env`` (numbers within ``low``..``high``)."""
    result: T = field(default=default, metadata={"env": env, "low": low, "high": high})
    return result


def env_names(cls: type) -> list[str]:
    """The variables of ``cls``'s ``setting`` fields."""
    return [f.metadata["env"] for f in fields(cls) if "env" in f.metadata]


def read_settings(cls: type[D], env: Mapping[str, str], **given: Any) -> D:
    """``cls`` with each ``setting`` field read from ``env`` (its default when unset); ``given`` as they are."""
    values = dict(given)
    for f in fields(cls):  # type: ignore[arg-type]
        meta = f.metadata
        if "env" not in meta or f.name in values:
            continue
        name, default = meta["env"], f.default
        if isinstance(default, bool) or not isinstance(default, int | float | str):
            raise TypeError(f"setting {f.name}: only int, float and str are read from the environment")
        if isinstance(default, str):
            values[f.name] = env_str(env, name, default)
        elif isinstance(default, int):
            values[f.name] = env_int(env, name, default, low=int(meta["low"]), high=int(meta["high"]))
        else:
            values[f.name] = env_float(env, name, default, low=meta["low"], high=meta["high"])
    return cls(**values)
