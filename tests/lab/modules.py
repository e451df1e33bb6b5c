"""Helpers shared by the lab tests that run modules: a lab per test file, and a module's view
(state, commands, waits) through `hakit` run inside the lab's nodes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hakit.lab.lab import Lab
from hakit.waiting import wait_until


@contextmanager
def lab_up(name: str, nodes: int, networks: int, clients: int, **options: Any) -> Iterator[Lab]:
    """A fresh lab (whatever an earlier failed run left is removed first), always removed;
    `options` go to `Lab.up`."""
    lab = Lab(name)
    lab.down(missing_ok=True)
    try:
        lab.up(nodes, networks, clients, **options)
        yield lab
    finally:
        lab.down(missing_ok=True)


def sh(lab: Lab, host: str, script: str, check: bool = True) -> str:
    """`sh -c script` on `host`; its output (with `check`, a failure fails the test)."""
    r = lab.exec(host, ["sh", "-c", script], capture=True, check=False)
    if check:
        assert r.returncode == 0, f"{host}$ {script}\n{r.stdout}{r.stderr}"
    return r.stdout


M = TypeVar("M", bound="LabModule")


@contextmanager
def removed_after(build: Callable[..., M]) -> Iterator[Callable[..., M]]:
    """A factory of modules (`build(**options)`), each stopped and uninstalled at the end."""
    made: list[M] = []

    def factory(**options: Any) -> M:
        m = build(**options)
        made.append(m)
        return m

    try:
        yield factory
    finally:
        for m in made:
            m.remove()


class LabModule:
    """A module as its nodes' daemons see it."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name

    def state(self, node: str) -> dict[str, Any]:
        r = self.lab.exec(node, ["hakit", "state", "--json"], capture=True, check=False)
        return json.loads(r.stdout) if r.returncode == 0 else {"modules": {}}

    def me(self, node: str) -> str:
        """`STATE status` of the module on `node` ("unknown" when not loaded there)."""
        mod = self.state(node)["modules"].get(self.name, {}).get("nodes", {}).get(node)
        return f"{mod['state']} {mod['status']}" if mod else "unknown"

    def cmd(self, node: str, *args: str, check: bool = True) -> str:
        """`hakit ARGS MODULE` on `node`; its output."""
        r = self.lab.exec(node, ["hakit", *args, self.name], capture=True, check=False)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout + r.stderr

    def wait(self, node: str, expected: str, timeout: float = 15) -> None:
        wait_until(lambda: self.me(node) == expected, timeout, f"{self.name} {expected} on {node}")

    def loaded(self, nodes: tuple[str, ...] = ("node1", "node2")) -> None:
        for node in nodes:
            wait_until(lambda node=node: self.me(node) != "unknown", 10, f"loaded on {node}")  # type: ignore[misc]

    def log(self, node: str) -> str:
        return self.cmd(node, "log")

    def remove(self) -> None:
        """Stop it everywhere and uninstall it (each kind of test module says how)."""
        raise NotImplementedError
