"""The command line explains itself: every command on one line of ``receiver --help``, every
option with help and its default, and completion scripts generated from the same parser."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from receiver import cli

README = (Path(__file__).parents[2] / "README.md").read_text()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    [group] = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def options(sp: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in sp._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_top_level_help_lists_every_command_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    commands = subparsers()
    assert {"serve", "worker", "submit", "status", "tasks", "demo", "simulate", "check"} <= set(
        commands
    )
    lines = text.splitlines()
    for name, sp in commands.items():
        [line] = [ln for ln in lines if re.match(rf"^\s+{name}\s", ln)]
        summary = line.split(name, 1)[1].strip()
        assert summary and summary == sp.description, (name, line)
        following = lines[lines.index(line) + 1]
        # The next line is another command or the end of the list, not a wrapped summary.
        assert not re.match(r"^\s{8,}\S", following), (name, following)
    assert "``" not in text and "{serve," not in text  # no raw markup or choice blobs
    assert "receiver completion bash" in text


@pytest.mark.parametrize("name", sorted(subparsers()))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    sp = subparsers()[name]
    shown = " ".join(sp.format_help().split())  # wrapping undone
    formatter = sp._get_formatter()
    for action in options(sp):
        flag = action.option_strings[-1]
        assert action.help and action.help is not argparse.SUPPRESS, f"{name} {flag}: no help"
        text = formatter._expand_help(action)
        assert " ".join(text.split()) in shown, f"{name} {flag}: help not shown"
        if isinstance(action, argparse._StoreTrueAction):
            continue  # off unless given
        if action.default is not None:
            assert f"(default: {action.default})" in text, text
        else:
            assert "default" in text or action.required, f"{name} {flag}: default not said"
    for action in sp._actions:
        if not action.option_strings:  # positionals: said what they are
            assert action.help, f"{name} {action.dest}: no help"


def test_help_does_not_invent_defaults_for_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    serve = subparsers()["serve"].format_help()
    assert "(default: 127.0.0.1)" in serve and "(default: 8000)" in serve
    [line] = [ln for ln in serve.splitlines() if "--no-worker" in ln and "HTTP only" in ln]
    assert "default" not in line
    simulate = subparsers()["simulate"].format_help()
    assert "(default: 0.0)" in simulate  # a zero default is still a default


@pytest.mark.parametrize("shell", cli.SHELLS)
def test_completion_script_covers_every_command_and_option(
    shell: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("shtab")
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert script.strip()
    for name, sp in subparsers().items():
        assert name in script, f"{shell}: no {name}"
        for action in options(sp):
            flag = action.option_strings[-1]
            # tcsh's script lists long options without their dashes.
            assert (flag.lstrip("-") if shell == "tcsh" else flag) in script, (shell, flag)
    binary = shutil.which(shell)
    if binary is not None and shell in ("bash", "zsh"):
        path = tmp_path / f"receiver.{shell}"
        path.write_text(script)
        checked = subprocess.run([binary, "-n", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_completion_of_an_unknown_shell_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["completion", "cmd.exe"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_readme_documents_the_completion_command() -> None:
    assert re.search(r"^receiver completion bash", README, re.M)
    assert "receiver completion zsh" in README


def test_readme_completion_lines_install_a_working_bash_completion(tmp_path: Path) -> None:
    """The README's lines, run as written with HOME in a temporary folder, leave a script
    that bash loads and that registers completion for `receiver`."""
    bash = shutil.which("bash")
    receiver = shutil.which("receiver")
    if bash is None or receiver is None:
        pytest.skip("needs bash and the installed receiver command")
    block = README.split("Shell completion scripts come from the same parser:", 1)[1]
    lines = block.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    # The folder line and the bash line; zsh and tcsh may not be installed here.
    setup = [ln.split("#")[0].strip() for ln in lines if "zsh" not in ln and "tcsh" not in ln]
    assert len(setup) == 2 and setup[1].startswith("receiver completion bash")
    env = {"HOME": str(tmp_path), "PATH": str(Path(receiver).parent) + ":/usr/bin:/bin"}
    done = subprocess.run([bash, "-c", " && ".join(setup)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    script = tmp_path / ".local/share/bash-completion/completions/receiver"
    check = f"source {script} && complete -p receiver"
    loaded = subprocess.run([bash, "-c", check], env=env, capture_output=True, text=True)
    assert loaded.returncode == 0 and "receiver" in loaded.stdout, loaded.stderr


@pytest.mark.parametrize(
    ("provider", "public", "network"),
    [
        ("bfl", "http://127.0.0.1:8100", "127.0.0.0/8"),
        ("fal", "http://10.1.2.3:8100", "10.1.2.3/32"),
        ("replicate", "https://sim.example", None),
    ],
)
def test_simulate_prints_the_settings_that_reach_it(
    provider: str, public: str, network: str | None, tmp_path: Path
) -> None:
    """A trial against `receiver simulate` needs the provider's base_url, the BFL simulator's
    regional host (its polling_url says localhost) and, for a private address, the fetcher's
    allowance: without the last two a result is refused (fetch_failed) or a replay is told
    "pending". What the command prints is TOML that loads as it stands."""
    import tomllib

    from receiver.config import load_settings
    from tests.helpers import base_config

    text = cli.simulator_config(provider, public)
    first, *rest = text.splitlines()
    assert first == "point a receiver at it with:"
    printed = tomllib.loads("\n".join(line.strip() for line in rest))
    conf = base_config(tmp_path)
    conf.pop("fetch", None)  # the test helpers allow loopback; a new user's file does not
    conf["providers"] = {provider: {**printed["providers"][provider], "api_key": "k"}}
    if "fetch" in printed:
        conf["fetch"] = printed["fetch"]
    settings = load_settings(None, {}, conf)
    assert printed["providers"][provider]["base_url"] == public
    polling = printed["providers"][provider].get("polling_hosts")
    assert polling == (["localhost"] if provider == "bfl" else None)
    allowed = [str(n) for n in settings.fetch.allowed_networks]
    assert allowed == ([network] if network else [])


def test_demo_on_a_port_in_use_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`receiver demo --serve` takes port 8000, which a second demo (or anything) may hold:
    one line naming the port and the way out, not uvicorn's traceback, and nothing started."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["demo", "--serve", "--port", str(port), "--dir", str(tmp_path / "d")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"receiver: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (choose another with --port)"
    ]
