"""Settings come from the environment, and bad values stop the process with the variable's name."""

from pathlib import Path

import pytest

from producer.settings import ProducerSettings
from server.settings import Settings
from support.env import SettingsError


def test_defaults_without_redis_are_embedded() -> None:
    settings = Settings.from_env({})
    assert settings.embedded and settings.heartbeat_seconds == 15 and settings.retention.max_events == 10_000
    assert settings.limits_exempt == () == Settings().limits_exempt  # safe by default: nobody unlimited


def test_redis_requires_a_shared_secret() -> None:
    with pytest.raises(SettingsError, match="STREAMFAN_SECRET"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    redis = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    with pytest.raises(SettingsError, match="at least 16"):
        Settings.from_env({**redis, "STREAMFAN_SECRET": "short"})
    with pytest.raises(SettingsError, match="too weak"):
        Settings.from_env({**redis, "STREAMFAN_SECRET": "x" * 64})
    with pytest.raises(SettingsError, match="whitespace"):
        Settings.from_env({**redis, "STREAMFAN_SECRET": "0123456789 abcdef"})
    with pytest.raises(SettingsError, match="STREAMFAN_PREVIOUS_SECRETS"):
        Settings.from_env({**redis, "STREAMFAN_SECRET": "0123456789abcdef", "STREAMFAN_PREVIOUS_SECRETS": "aaaa"})
    with pytest.raises(SettingsError, match="STREAMFAN_TRUSTED_PROXIES"):
        Settings.from_env({**redis, "STREAMFAN_SECRET": "0123456789abcdef", "STREAMFAN_TRUSTED_PROXIES": "nginx"})
    ok = Settings.from_env({**redis, "STREAMFAN_SECRET": "0123456789abcdef"})
    assert ok.secret == b"0123456789abcdef" and not ok.embedded


def test_secrets_may_come_from_files_named_by_NAME_FILE(tmp_path: Path) -> None:
    """Docker's secrets convention, which compose uses: the variable wins, else the file's contents."""
    (tmp_path / "url").write_text("redis://:pw@redis:6379/0\n")
    (tmp_path / "secret").write_text("0123456789abcdef\n")
    env = {"REDIS_URL_FILE": str(tmp_path / "url"), "STREAMFAN_SECRET_FILE": str(tmp_path / "secret")}
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://:pw@redis:6379/0" and settings.secret == b"0123456789abcdef"
    assert ProducerSettings.from_env(env).redis_url == "redis://:pw@redis:6379/0"
    given = Settings.from_env({**env, "STREAMFAN_SECRET": "fedcba9876543210"})
    assert given.secret == b"fedcba9876543210"
    with pytest.raises(SettingsError, match="STREAMFAN_SECRET_FILE") as caught:
        Settings.from_env({**env, "STREAMFAN_SECRET_FILE": str(tmp_path / "missing")})
    assert str(caught.value).count("\n") == 0


def test_compose_secrets_are_made_once_kept_and_taken_from_the_environment_when_given(tmp_path: Path) -> None:
    from launch.compose_secrets import make

    make(tmp_path, {})
    first = {name: (tmp_path / name).read_text() for name in ("streamfan_secret", "redis_password", "redis_url")}
    password = first["redis_password"].strip()
    assert len(password) == 64 and first["redis_url"] == f"redis://:{password}@redis:6379/0\n"
    assert (tmp_path / "redis.conf").read_text() == f"requirepass {password}\nmasterauth {password}\n"
    make(tmp_path, {"STREAMFAN_REDIS_HOST": "redis-cluster-1"})  # a restart keeps the secrets
    assert (tmp_path / "streamfan_secret").read_text() == first["streamfan_secret"]
    assert (tmp_path / "redis_url").read_text() == f"redis://:{password}@redis-cluster-1:6379/0\n"
    make(tmp_path, {"STREAMFAN_SECRET": "fedcba9876543210", "REDIS_PASSWORD": "given-password-0123"})
    assert (tmp_path / "streamfan_secret").read_text() == "fedcba9876543210\n"
    assert "requirepass given-password-0123\n" in (tmp_path / "redis.conf").read_text()
    assert (
        Settings.from_env({"STREAMFAN_SECRET_FILE": str(tmp_path / "streamfan_secret")}).secret == b"fedcba9876543210"
    )
    with pytest.raises(SystemExit, match="REDIS_PASSWORD"):
        make(tmp_path, {"REDIS_PASSWORD": "has a space in it, so a config line would break"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STREAMFAN_HEARTBEAT_SECONDS", "abc", "is not a number"),
        ("STREAMFAN_HEARTBEAT_SECONDS", "60", "outside"),
        ("STREAMFAN_RETRY_MS", "1.5", "is not a whole number"),
        ("STREAMFAN_HISTORY_MAX_EVENTS", "5", "outside"),
        ("STREAMFAN_CORS_ORIGINS", "*", "no wildcards"),
        ("STREAMFAN_CORS_ORIGINS", "example.com", "not an origin"),
        ("STREAMFAN_DEFAULT_MAX_TOKENS", "5000", "exceeds"),
        ("STREAMFAN_ALLOWED_HOSTS", "chat.example.com:8443", "has a port"),
    ],
)
def test_bad_values_fail_loudly_with_the_name(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


def test_the_openai_upstream_is_checked_at_start_with_one_line_naming_it() -> None:
    """Issue 22: a schemeless OPENAI_BASE_URL was accepted and every answer then failed; a bad
    STREAMFAN_OPENAI_* value printed a traceback at the first answer."""
    for name, value in (("OPENAI_BASE_URL", "127.0.0.1:8000/v1"), ("STREAMFAN_OPENAI_TEMPERATURE", "hot")):
        with pytest.raises(SettingsError, match=name) as caught:
            ProducerSettings.from_env({"STREAMFAN_GENERATOR": "openai", name: value})
        assert "\n" not in str(caught.value)
    ProducerSettings.from_env({"STREAMFAN_GENERATOR": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"})
    assert Settings.from_env({"STREAMFAN_ALLOWED_HOSTS": "::1, [::1], chat.example.com"}).allowed_hosts == (
        "::1",
        "::1",
        "chat.example.com",
    )


def test_producer_settings() -> None:
    settings = ProducerSettings.from_env({"STREAMFAN_SIM_TTFT_MS": "150", "STREAMFAN_GENERATOR": "echo"})
    assert settings.pacing.ttft_seconds == 0.15 and settings.generator == "echo"
    with pytest.raises(SettingsError, match="STREAMFAN_GENERATOR"):
        ProducerSettings.from_env({"STREAMFAN_GENERATOR": "nonsense"})
    with pytest.raises(SettingsError, match="STREAMFAN_SIM_JITTER"):
        ProducerSettings.from_env({"STREAMFAN_SIM_JITTER": "2"})


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    from support.env import env_names
    from wire.env import Retention

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    special = ["REDIS_URL", "STREAMFAN_SECRET", "STREAMFAN_CORS_ORIGINS", "STREAMFAN_PRODUCER_NAME"]
    special += ["STREAMFAN_PREVIOUS_SECRETS", "STREAMFAN_TRUSTED_PROXIES", "STREAMFAN_LIMITS_EXEMPT"]
    special += ["STREAMFAN_ALLOWED_HOSTS"]
    special += [
        "STREAMFAN_SIM_TTFT_MS",
        "STREAMFAN_SIM_TOKENS_PER_SECOND",
        "STREAMFAN_SIM_JITTER",
        "STREAMFAN_SIM_SEED",
    ]
    from producer.upstream import UpstreamSettings

    special += ["OPENAI_API_KEY", "STREAMFAN_API_KEYS"]
    from launch.redis_client import RedisTopology

    names = env_names(Settings) + env_names(ProducerSettings) + env_names(Retention) + env_names(UpstreamSettings)
    names += env_names(RedisTopology)
    names += special
    missing = [name for name in names if f"`{name}`" not in readme]
    assert missing == []


def test_the_garbage_collector_is_tuned_for_many_live_objects_and_the_setting_is_checked() -> None:
    import gc

    from launch.gc_tuning import DEFAULT_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc({})
        assert gc.get_threshold() == (DEFAULT_THRESHOLD, 50, 10)
        gc.set_threshold(700, 10, 10)
        tune_gc({"STREAMFAN_GC_THRESHOLD": "0"})
        assert gc.get_threshold() == (700, 10, 10)
        with pytest.raises(SettingsError, match="STREAMFAN_GC_THRESHOLD"):
            tune_gc({"STREAMFAN_GC_THRESHOLD": "lots"})
    finally:
        gc.set_threshold(*before)
