"""``receiver check`` against a good configuration and broken ones, as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import base_config, write_config


def check(tmp: Path, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp, conf)
    return subprocess.run(
        [sys.executable, "-m", "receiver", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def s3(endpoint: str, bucket: str) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket": bucket,
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }


def test_good_configuration_passes(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str, pg_dsn: str
) -> None:
    conf = base_config(tmp_path, ledger_url=pg_dsn)
    conf["destinations"]["s3"] = s3(moto_endpoint, s3_bucket)
    done = check(tmp_path, conf)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok") and "ledger" in line for line in lines)
    assert any(line.startswith("ok") and "destination s3 (s3)" in line for line in lines)
    assert any(line.startswith("ok") and "destination local" in line for line in lines)
    assert "Traceback" not in done.stderr


def test_missing_bucket_fails_on_its_line(tmp_path: Path, moto_endpoint: str) -> None:
    conf = base_config(tmp_path)
    conf["destinations"]["s3"] = s3(moto_endpoint, "no-such-bucket-anywhere")
    done = check(tmp_path, conf)
    assert done.returncode != 0
    [line] = [ln for ln in done.stdout.splitlines() if "destination s3" in ln]
    assert line.startswith("FAIL") and "NoSuchBucket" in line
    assert "Traceback" not in done.stderr


def test_unreachable_ledger_fails(tmp_path: Path) -> None:
    conf = base_config(tmp_path, ledger_url="postgresql://postgres@127.0.0.1:1/nothing")
    done = check(tmp_path, conf)
    assert done.returncode != 0
    [line] = [ln for ln in done.stdout.splitlines() if ln.split()[1] == "ledger:"]
    assert line.startswith("FAIL")
    assert "Traceback" not in done.stderr


def test_missing_secret_stops_with_one_line(tmp_path: Path) -> None:
    conf = base_config(tmp_path)
    del conf["secret_keys"]
    done = check(tmp_path, conf)
    assert done.returncode != 0
    out = (done.stdout + done.stderr).strip().splitlines()
    assert len(out) == 1 and "secret_keys" in out[0], out
    assert "Traceback" not in done.stderr


def test_notify_url_without_its_secret_fails(tmp_path: Path) -> None:
    conf = base_config(tmp_path, notify={"default_url": "https://app.example/hook"})
    done = check(tmp_path, conf)
    assert done.returncode != 0
    assert any(ln.startswith("FAIL") and "notify.secret" in ln for ln in done.stdout.splitlines())
