"""What the architecture scenes share: the lab each needs, modules made from the shipped
examples and templates, and the farm client. A scene is a narrated story that checks what it
tells: each claim it prints was just measured, and a claim that does not hold stops it with a
`DemoFailed` naming the step (the lab tests run the scenes for that)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml
from rich.console import Console

from hakit.lab.lab import Lab
from hakit.lab.narrator import DemoFailed, Narrator
from hakit.waiting import WaitTimeout, wait_until

FARM_VIP = "10.100.1.200"
SOURCES = "10.100.1.150-10.100.1.179"  # client addresses of the farm client: many clients


def need(program: str, package: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return (
            None if shutil.which(program) else f"{program} is missing (apt-get install {package})"
        )

    return check


class Scene(Narrator):
    """One architecture, told on a lab of `nodes` servers with one network and one client."""

    name: ClassVar[str]
    summary: ClassVar[str]
    nodes: ClassVar[int] = 2
    private: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[Callable[[], str | None], ...]] = ()

    def __init__(self, lab: Lab, console: Console) -> None:
        super().__init__(lab, console)
        self.work = Path(tempfile.mkdtemp(prefix=f"hakit-scene-{self.name}-"))
        self.installed: list[str] = []

    @classmethod
    def missing(cls) -> str | None:
        """What this machine lacks for the scene (None: nothing)."""
        return next((why for why in (check() for check in cls.needs) if why), None)

    @classmethod
    def cluster(cls, text: str) -> str:
        """The lab's cluster.yaml as the scene wants it (before the daemons start)."""
        return text

    def run(self) -> None:
        raise NotImplementedError

    def power_on(self, node: str) -> None:
        """Power `node` on and start its daemon, as systemd does at boot (scene labs are built
        without daemons, to give the scene its cluster.yaml first)."""
        self.lab.poweron(node)
        self.lab.start_daemons([node])

    def close(self) -> None:
        """Stop and uninstall the scene's modules (the lab itself is removed by its owner)."""
        try:
            for node in self.lab.nodes:
                if self.lab.hosts()[node].power != "on":
                    self.power_on(node)
            for module in reversed(self.installed):
                self.lab.exec(
                    "node1", ["hakit", "stop", module, "--all"], capture=True, check=False
                )
            for module in reversed(self.installed):
                for node in self.lab.nodes:  # "" where the module is not
                    with suppress(WaitTimeout):  # uninstall below stops it the hard way
                        wait_until(
                            lambda m=module, n=node: (
                                self.module_state(n, m)  # type: ignore[misc]
                                in ("STOP not-ready", "")
                            ),
                            60,
                            f"{module} stopped on {node}",
                        )
                self.lab.exec(
                    "node1",
                    ["hakit", "module", "uninstall", module, "--all"],
                    capture=True,
                    check=False,
                )
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    # modules ----------------------------------------------------------------------------

    def example(self, name: str, source: str, **changes: Any) -> Path:
        """A module folder `name` from the shipped example `source`, keys of module.yaml
        replaced by `changes`."""
        folder = self.work / name
        with resources.as_file(resources.files("hakit") / "examples" / source) as src:
            shutil.copytree(src, folder)
        cfg = yaml.safe_load((folder / "module.yaml").read_text())
        cfg.update(changes)
        (folder / "module.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return folder

    def web_app(self, name: str, nodes: list[str], n: int, **more: Any) -> Path:
        """A mirror-web module on `nodes`: its own VIP 10.100.1.(140+n), port 8080+n and
        replicated site /srv/NAME/www."""
        root = f"/srv/{name}"
        return self.example(
            name,
            "mirror-web",
            nodes=nodes,
            **more,
            vips=[{"address": f"10.100.1.{140 + n}/24", "network": "net1"}],
            replication={"mode": "sync", "port": 7380 + n, "dirs": [{"path": f"{root}/www"}]},
            variables={"WEB_PORT": str(8080 + n), "WEB_ROOT": root},
        )

    def install(self, folder: Path) -> None:
        self.hakit("node1", "module", "install", str(folder), "--all", quiet=True)
        self.installed.append(folder.name)
        nodes = yaml.safe_load((folder / "module.yaml").read_text())["nodes"]
        for node in nodes:
            wait_until(
                lambda node=node: self.module_state(node, folder.name),  # type: ignore[misc]
                15,
                f"{folder.name} loaded on {node}",
            )

    def start_mirror(self, module: str, primary: str, secondary: str) -> None:
        self.hakit(primary, "prim", module, quiet=True)
        self.wait_module(primary, module, "ALONE ready", 60)
        self.hakit(secondary, "second", module, quiet=True)
        self.wait_module(secondary, module, "SECOND ready", 120)
        self.wait_module(primary, module, "PRIM ready", 30)

    def write(self, node: str, path: str, text: str) -> None:
        r = self.lab.exec(
            node,
            ["sh", "-c", f"printf '%s\\n' '{text}' > {path} && sync {path}"],
            capture=True,
            check=False,
        )
        if r.returncode != 0:
            raise DemoFailed(f"demo: writing {path} on {node} failed: {r.stderr.strip()}")

    def expect_page(self, url: str, expected: str, what: str, timeout: float = 10) -> float:
        """Wait until `url` answers `expected` from the client; the seconds waited."""
        start = time.monotonic()
        try:
            wait_until(lambda: self.get("client1", url) == expected, timeout, "")
        except WaitTimeout:
            got = self.get("client1", url) or "no answer"
            raise DemoFailed(f"demo: {what}: {url} gave {got!r}, not {expected!r}") from None
        self.say(f"  {url} → “{expected}” ({what})")
        return time.monotonic() - start

    # farm -------------------------------------------------------------------------------

    def add_client_addresses(self) -> None:
        first, last = (int(a.rsplit(".", 1)[1]) for a in SOURCES.split("-"))
        batch = "".join(f"addr add 10.100.1.{i}/24 dev eth0\n" for i in range(first, last + 1))
        self.lab.exec("client1", ["ip", "-batch", "-"], input=batch, capture=True)

    def farm_round(self, count: int = 60) -> dict[str, Any]:
        """`count` connections to the farm from 30 client addresses: who served them."""
        argv = [sys.executable, "-m", "hakit.lab.webclient", FARM_VIP, "--count", str(count)]
        argv += ["--sources", SOURCES, "--timeout", "2"]
        r = self.lab.exec("client1", argv, capture=True, check=False)
        if r.returncode != 0:
            raise DemoFailed(f"demo: the farm client failed: {r.stderr.strip()}")
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def farm_served_by(self, nodes: set[str], timeout: float) -> float:
        """Wait until the farm is served by exactly `nodes`, none failing; seconds waited."""
        start = time.monotonic()
        last: dict[str, Any] = {}

        def served() -> bool:
            nonlocal last
            last = self.farm_round(30)
            return not last["failed"] and set(last["served"]) == nodes

        try:
            wait_until(served, timeout, "", interval=0.2)
        except WaitTimeout:
            raise DemoFailed(
                f"demo: the farm is not served by {', '.join(sorted(nodes))} after {timeout:g} s: "
                f"{last.get('served')}, {last.get('failed')} failed"
            ) from None
        return time.monotonic() - start

    def show_farm(self, count: int = 60) -> None:
        r = self.farm_round(count)
        if r["failed"]:
            raise DemoFailed(f"demo: {r['failed']} farm connections failed: {r['errors']}")
        served = ", ".join(f"{n} {c}" for n, c in sorted(r["served"].items()))
        self.say(f"  {count} connections to http://{FARM_VIP}/ from 30 addresses: {served}")
