"""Every `hakit` command, fed random arguments: a documented error or a result, never a traceback.

The commands run in-process through `hakit.cli.main.main` (what the installed `hakit` runs),
with a real cluster configuration in a temporary folder and no daemon running; nodes' API
addresses are on loopback, so the commands that reach a node fail fast with a refused
connection. Long-running or machine-changing commands (`daemon`, `lab`, `witness run`,
`console serve`) are left
out: their arguments are the same option types checked here; so is `log --follow`. No
argument holds a NUL: a command line cannot carry one (execve ends each argument at it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakit.cli.main import cli, main

SKIP = {("daemon",), ("lab",), ("witness", "run"), ("console", "serve")}
FOLLOW = {"-f", "--follow"}  # `log -f` follows the timeline until interrupted, as `tail -F`


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):
        here = (*path, name)
        if any(here[: len(s)] == s for s in SKIP):
            continue
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, here)
        else:
            yield here


COMMANDS = list(leaves(cli))


def command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-fuzz")
    env = {"HAKIT_ETC": str(root / "etc"), "HAKIT_VAR": str(root / "var"), "PATH": "/usr/bin"}
    nodes = ["--node", "node1:lan=127.0.0.1", "--node", "node2:lan=127.0.0.2"]
    subprocess.run(
        [sys.executable, "-m", "hakit", "cluster", "init", "--name", "fuzz", *nodes],
        env={**env, "HAKIT_LOG": str(root / "log")},
        check=True,
        capture_output=True,
    )
    return root


TOKENS = st.one_of(
    # what a command line can carry: any bytes but NUL, decoded as Python decodes argv
    st.binary(max_size=12).map(lambda b: os.fsdecode(b.replace(b"\0", b""))),
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12),
    st.sampled_from(
        [
            "web1",
            "node1",
            "node2",
            "nosuch",
            "-1",
            "nan",
            "1e999",
            "/dev/null",
            "/etc/passwd",
            "/nonexistent/x",
            "/tmp",
            "--json",
            "--all",
            "--node",
            "--help",
            "",
            "\x1f",
            "é\n",
        ]
    ),
)


def argv_for(path: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    options = [
        o for p in command(path).params for o in p.opts if o not in ("-h", "--help", *FOLLOW)
    ]
    token = st.one_of(TOKENS, st.sampled_from(options)) if options else TOKENS
    token = token.filter(lambda t: t not in FOLLOW)
    return st.lists(token, max_size=5).map(lambda rest: [*path, *rest])


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_random_arguments_give_a_result_or_a_documented_error(
    path: tuple[str, ...],
    cluster: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for var, sub in (("HAKIT_ETC", "etc"), ("HAKIT_VAR", "var"), ("HAKIT_LOG", "log")):
        monkeypatch.setenv(var, str(cluster / sub))
    monkeypatch.setenv("HAKIT_CONSOLE_STATE", str(cluster / "console"))
    monkeypatch.delenv("HAKIT_NODE", raising=False)
    monkeypatch.chdir(cluster)

    @settings(
        max_examples=40,
        deadline=10_000,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(argv_for(path))
    def run(argv: list[str]) -> None:
        code: object = 0
        try:
            main(argv)
        except SystemExit as e:  # main() exits with a status on every error it documents
            code = e.code
        assert isinstance(code, int | None), argv
        out, err = capfd.readouterr()
        assert "Traceback" not in out + err, (argv, err[-2000:])

    run()
