"""The package as a new user gets it: build the wheel, look inside, install it into an empty
environment, run ``receiver demo``, then add the PostgreSQL extra.

Marked ``packaging``; it runs in CI with the rest of the suite. It takes about 15 s with a warm
uv cache and 30-60 s on a machine that has to download the dependencies (about 50 MB) from the
package index once. The build needs no network (``--no-build-isolation`` with the test extra's
setuptools); the installs go through uv, pinned to requirements.lock, the lock the Docker image
installs from.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import receiver
from tests.helpers import SECRET, base_config, write_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.packaging

UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy holding only what the Docker build copies, so a file the build needs
    but the image build does not send fails here too."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "receiver", src / "receiver", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--wheel-dir", out, src,
    )  # fmt: skip
    [built] = out.glob("*.whl")
    return built


def test_wheel_carries_license_types_sql_and_templates(wheel: Path) -> None:
    version = receiver.__version__
    assert wheel.name == f"flux_receiver-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"flux_receiver-{version}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    license_text = zipfile.ZipFile(wheel).read(f"{info}/licenses/LICENSE").decode()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "receiver/py.typed" in names
    sql = {str(p.relative_to(ROOT)) for p in (ROOT / "receiver").rglob("*.sql")}
    assert sql and sql <= names
    ui = ROOT / "receiver" / "ui"
    if ui.is_dir():  # the console's templates and static files, once it has them
        assets = {
            str(p.relative_to(ROOT))
            for p in ui.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
        }
        assert assets <= names, sorted(assets - names)
    assert not any(n.startswith("tests/") for n in names)

    meta = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode())
    assert meta["Name"] == "flux-receiver" and meta["Version"] == version
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert {"postgres", "all"} <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    psycopg = [r for r in requires if r.startswith("psycopg")]
    assert psycopg and all("extra ==" in r for r in psycopg), psycopg  # never a core dependency
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Changelog", "Issues"} <= set(urls)
    assert "Typing :: Typed" in meta.get_all("Classifier")
    entry = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "receiver = receiver.cli:main" in entry


def test_fresh_venv_runs_the_demo_then_gains_postgres_from_the_extra(
    wheel: Path, tmp_path: Path, pg_dsn: str
) -> None:
    if not Path(UV).exists():
        pytest.fail("uv is missing: pip install -e '.[test]'")
    venv = tmp_path / "venv"
    run(UV, "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    lock = ROOT / "requirements.lock"
    install = (UV, "pip", "install", "--quiet", "--python", python, "--constraint", lock)
    run(*install, wheel)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    cli = venv / "bin" / "receiver"
    assert run(cli, "--version", env=env).strip() == f"receiver {receiver.__version__}"

    out = run(cli, "demo", "--dir", tmp_path / "demo", env=env, timeout=120)
    assert out.count(": archived") == 3, out
    images = list((tmp_path / "demo" / "archive").rglob("*.png"))
    assert len(images) == 3 and all(Path(f"{p}.json").exists() for p in images)

    # Without the extra: no driver installed, and a PostgreSQL ledger is one clear line.
    probe = subprocess.run(
        [python, "-c", "import psycopg"], capture_output=True, env=env, check=False
    )
    assert probe.returncode != 0, "psycopg came in without the [postgres] extra"
    conf = base_config(tmp_path, ledger_url=pg_dsn)
    path = write_config(tmp_path, conf)
    refused = subprocess.run(
        [cli, "serve", "--config", path, "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("receiver: ") and "pip install 'flux-receiver[postgres]'" in line

    run(*install, f"{wheel}[postgres]")
    checked = run(cli, "check", "--config", path, env=env)
    assert "ledger" in checked.lower(), checked
    assert SECRET not in checked


def test_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "receiver.__version__"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{receiver.__version__}]" in changelog
