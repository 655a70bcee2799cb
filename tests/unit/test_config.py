from __future__ import annotations

import sys
from pathlib import Path

import pytest

from receiver.config import S3Settings, load_settings
from receiver.errors import ConfigError

KEY = "k" * 20


def test_env_overrides_the_file_and_nests_with_double_underscore(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        f'secret_keys = ["{"a" * 20}"]\npublic_url = "http://file"\n'
        '[destinations.arc]\ntype = "s3"\nbucket = "from-file"\n'
    )
    env = {
        "RECEIVER_PUBLIC_URL": "https://hooks.example.com/",
        "RECEIVER_SECRET_KEYS": f"{KEY},{'b' * 20}",
        "RECEIVER_DEFAULT_DESTINATION": "arc",
        "RECEIVER_DESTINATIONS__ARC__BUCKET": "from-env",
        "RECEIVER_WORKER__CONCURRENCY": "3",
        "RECEIVER_FETCH__ALLOWED_NETWORKS": "127.0.0.0/8, 10.0.0.0/8",
    }
    s = load_settings(path, env)
    assert s.public_url == "https://hooks.example.com"
    assert s.secret_keys == [KEY, "b" * 20]
    dest = s.destinations["arc"]
    assert isinstance(dest, S3Settings) and dest.bucket == "from-env"
    assert s.worker.concurrency == 3
    assert s.fetch.allowed_networks == ["127.0.0.0/8", "10.0.0.0/8"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "secret_keys"),
        ({"RECEIVER_SECRET_KEYS": "short"}, "secret_keys"),
        ({"RECEIVER_WORKER__CONCURRENCY": "many"}, "worker.concurrency"),
        ({"RECEIVER_DESTINATIONS__X__TYPE": "s3"}, "destinations.x.bucket"),
        ({"RECEIVER_DESTINATIONS__X__TYPE": "ftp"}, "destinations.x"),
        ({"RECEIVER_TYPO_KEY": "1"}, "typo_key"),
        ({"RECEIVER_DEFAULT_DESTINATION": "nowhere"}, "default_destination"),
        ({"RECEIVER_FETCH__ALLOWED_NETWORKS": "not-a-net"}, "fetch.allowed_networks"),
        ({"RECEIVER_NOTIFY__SECRET": "plain"}, "notify.secret"),
        ({"RECEIVER_LEDGER_URL": "mysql://x"}, "ledger_url"),
    ],
)
def test_a_bad_key_is_one_line_naming_it(env: dict[str, str], names: str) -> None:
    base = {} if "RECEIVER_SECRET_KEYS" in env or not env else {"RECEIVER_SECRET_KEYS": KEY}
    with pytest.raises(ConfigError) as err:
        load_settings(None, {**base, **env})
    message = err.value.message
    assert "\n" not in message
    assert message.startswith(names), message


def test_missing_and_broken_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("secret_keys = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, {})


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'secret_keys = ["{KEY}"]\napi_keys = ["a1"]\n')
    assert load_settings(None, {"RECEIVER_CONFIG": str(path)}).api_keys == ["a1"]


@pytest.mark.parametrize("module", ["psycopg", "psycopg_pool"])
def test_postgres_ledger_without_the_extra_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """psycopg is the [postgres] extra; without it a postgresql:// ledger names what to install
    (tests/integration/test_packaging.py checks the same in a real environment without it)."""
    from receiver.ledger import open_ledger

    monkeypatch.setitem(sys.modules, module, None)  # import now fails
    with pytest.raises(ConfigError) as caught:
        open_ledger("postgresql://u@127.0.0.1/db")
    message = caught.value.message
    assert "\n" not in message and "pip install 'flux-receiver[postgres]'" in message
    assert message.startswith("ledger_url: ")


# --- issue 12, finding 11: configuration traps -------------------------------------------------


def test_finding11_client_variables_never_reach_server_settings() -> None:
    env = {"RECEIVER_SECRET_KEYS": KEY, "RECEIVER_URL": "http://x", "RECEIVER_API_KEY": "a"}
    assert load_settings(None, env).public_url == "http://127.0.0.1:8000"


def test_finding11_a_bad_variable_is_blamed_on_the_variable_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text(f'secret_keys = ["{KEY}"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, {"RECEIVER_WORKER__CONCURRENCY": "many"})
    assert err.value.message.endswith("[environment variable RECEIVER_WORKER__CONCURRENCY]")
    path.write_text(f'secret_keys = ["{KEY}"]\n[worker]\nconcurrency = "many"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert err.value.message.endswith(f"[{path}]")


@pytest.mark.parametrize(
    ("env", "start", "suggestion"),
    [
        ({"RECEIVER_SECRET_KEY": KEY}, "secret_key: unknown key", "secret_keys"),
        ({"RECEIVER_WORKER__CONCURENCY": "2"}, "worker.concurency: unknown key", "concurrency"),
        ({"RECEIVER_NOTIFY__SECRT": "x"}, "notify.secrt: unknown key", "secret"),
        ({"RECEIVER_PROVIDERS__BLF__API_KEY": "x"}, "providers.blf: unknown provider", "bfl"),
        ({"RECEIVER_PROVIDERS__BFL__API_KYE": "x"}, "providers.bfl.api_kye: unknown", "api_key"),
        ({"RECEIVER_PROVIDERS__FAL__JWKS_UR": "x"}, "providers.fal.jwks_ur: unknown", "jwks_url"),
        ({"RECEIVER_DEFAULT_PROVIDER": "replicat"}, "default_provider: unknown", "replicate"),
    ],
)
def test_finding11_typos_are_named_with_a_did_you_mean(
    env: dict[str, str], start: str, suggestion: str
) -> None:
    base = {} if "RECEIVER_SECRET_KEY" in env else {"RECEIVER_SECRET_KEYS": KEY}
    with pytest.raises(ConfigError) as err:
        load_settings(None, {**base, **env})
    message = err.value.message
    assert message.startswith(start), message
    assert f"did you mean {suggestion!r}" in message
    assert "(and 1 more)" not in message and "\n" not in message


def test_finding11_unknown_provider_options_are_refused_where_declared() -> None:
    env = {"RECEIVER_SECRET_KEYS": KEY, "RECEIVER_PROVIDERS__FAL__TOTALLY_NEW": "1"}
    with pytest.raises(ConfigError, match=r"providers\.fal\.totally_new: unknown option"):
        load_settings(None, env)
    ok = {"RECEIVER_SECRET_KEYS": KEY, "RECEIVER_PROVIDERS__FAL__JWKS_URL": "https://k.test/j"}
    assert load_settings(None, ok).providers["fal"].option("jwks_url") == "https://k.test/j"
