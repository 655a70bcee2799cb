"""The README is part of the contract: every configuration key is documented, the first lines
are the two commands, and the commands it shows exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from receiver.cli import parser
from receiver.config import (
    BunnySettings,
    ConsoleSettings,
    FetchSettings,
    FilesystemSettings,
    NotifySettings,
    ProvenanceSettings,
    ProviderSettings,
    S3Settings,
    ServerSettings,
    Settings,
    WorkerSettings,
)

README = (Path(__file__).parents[2] / "README.md").read_text()


def section(heading: str) -> str:
    """The text under a ``### heading`` up to the next heading."""
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#)", README, re.M | re.S)
    assert match, f"README has no section '### {heading}'"
    return match.group(1)


def documented(text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, re.M))


SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", Settings),
    ("`[notify]`", NotifySettings),
    ("`[fetch]`", FetchSettings),
    ("`[worker]`", WorkerSettings),
    ("`[server]`", ServerSettings),
    ("`[provenance]`", ProvenanceSettings),
    ("`[console]`", ConsoleSettings),
    ("`[providers.<name>]`", ProviderSettings),
    ("Destination type `filesystem`", FilesystemSettings),
    ("Destination type `s3`", S3Settings),
    ("Destination type `bunny`", BunnySettings),
]


@pytest.mark.parametrize(("heading", "model"), SECTIONS, ids=[s[0] for s in SECTIONS])
def test_every_configuration_key_is_documented(heading: str, model: type[BaseModel]) -> None:
    keys = set(model.model_fields)
    rows = documented(section(heading))
    assert keys - rows == set(), f"undocumented keys under {heading}: {sorted(keys - rows)}"
    assert rows - keys == set(), f"documented keys that do not exist: {sorted(rows - keys)}"


def test_first_lines_are_the_two_commands() -> None:
    lines = README.splitlines()
    assert lines[0] == "```sh" and lines[3] == "```"
    assert lines[1].endswith("receiver demo")
    assert lines[2].endswith("pytest") and "'.[test]'" in lines[2]


def test_ci_runs_the_readme_commands_word_for_word() -> None:
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text().splitlines()
    demo, tests = README.splitlines()[1:3]
    assert tests in ci  # a line of its own, run in the checkout
    assert any(f"&& {demo})" in line for line in ci)  # run in a fresh clone


def test_commands_shown_exist() -> None:
    commands = set(parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    shown = set(re.findall(r"^receiver ([a-z]+)", README, re.M))
    assert shown and shown <= commands, shown - commands
    for name in ("serve", "worker", "submit", "status", "tasks", "demo", "simulate", "check"):
        assert name in commands


def test_provider_table_lists_every_adapter() -> None:
    from receiver.providers import REGISTRY

    rows = set(re.findall(r"^\| `([a-z]+)` \| ", README.split("## Providers", 1)[1], re.M))
    assert set(REGISTRY) <= rows


def test_module_map_lists_every_module_of_the_package() -> None:
    """The README's map of the modules matches the package: each top-level module and each
    subpackage is named once, and nothing that is not there."""
    table = section("Map of the modules")
    named: list[str] = []
    for row in re.findall(r"^\| (`[^|]+) \|", table, re.M):
        named += re.findall(r"`([a-z_]+(?:\.py|/))`", row)
    package = Path(__file__).parents[2] / "receiver"
    present = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    present |= {p.name + "/" for p in package.iterdir() if (p / "__init__.py").exists()}
    assert sorted(named) == sorted(present)


def test_the_testing_kit_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's receiver.testing example, run as written: one task archived in memory."""
    match = re.search(r"```python\n(import asyncio\n\nfrom receiver\.testing .*?)```", README, re.S)
    assert match, "README lost its receiver.testing example"
    exec(compile(match.group(1), "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    out = capsys.readouterr().out
    assert out.startswith("archived ") and ".png.json" in out


def test_every_environment_example_in_the_readme_loads() -> None:
    """Issue 12, finding 11: the README's own ``RECEIVER_SECRET_KEYS=k1,k2`` was refused."""
    from receiver.config import load_settings

    examples = re.findall(r"`(RECEIVER_[A-Z_]+)=([^`\s]+)`", README)
    assert len(examples) >= 3
    for name, value in examples:
        env = {"RECEIVER_SECRET_KEYS": "x" * 20, name: value}
        if "DESTINATIONS__ARCHIVE" in name:  # completes the README's [destinations.archive]
            env["RECEIVER_DESTINATIONS__ARCHIVE__TYPE"] = "s3"
            env["RECEIVER_DEFAULT_DESTINATION"] = "archive"
        load_settings(None, env)  # raises ConfigError naming the key if the example is wrong


def test_the_readme_toml_example_loads(tmp_path: Path) -> None:
    from receiver.config import load_settings

    toml = re.search(r"A minimal `receiver.toml`:\n\n```toml\n(.*?)```", README, re.S)
    assert toml
    path = tmp_path / "receiver.toml"
    path.write_text(toml.group(1))
    assert load_settings(path, {}).providers["bfl"].api_key == "bfl-key"
