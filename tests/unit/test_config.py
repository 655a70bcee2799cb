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
