"""The mirror runner with fake ports: what it does to scripts, VIPs and its state file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hakit.adapters.probes import ProbePort, RealProbes
from hakit.config.model import Cluster
from hakit.config.module import MirrorModule, ModuleFile
from hakit.core import mirror as mm
from hakit.core.outcomes import Accepted, Refused
from hakit.daemon.logs import Event
from hakit.daemon.mirror_runner import MirrorRunner
from hakit.daemon.module_runner import Environment
from hakit.paths import Paths
from hakit.testing.fakes import FakeProbes, FakeScriptRunner, FakeVips

CLUSTER = Cluster.model_validate(
    {
        "cluster": "c",
        "networks": {"lan": {}},
        "nodes": {
            "node1": {"addresses": {"lan": "10.0.0.1"}},
            "node2": {"addresses": {"lan": "10.0.0.2"}},
        },
    }
)
MODULE = MirrorModule.model_validate(
    {
        "kind": "mirror",
        "nodes": ["node1", "node2"],
        "vips": [{"address": "10.0.0.100/24", "network": "lan"}],
        "variables": {"COLOR": "blue"},
    }
)
PEER_LOST = mm.PeerInfo(alive=False)


class World:
    def __init__(self, tmp: Path, scripts: FakeScriptRunner | None = None) -> None:
        self.paths = Paths(tmp / "etc", tmp / "var", tmp / "log")
        self.vips = FakeVips({"eth0": ["10.0.0.1/24"]})
        self.scripts = scripts or FakeScriptRunner()
        self.events: list[Event] = []
        self.published = 0
        self.module = ModuleFile("web", tmp / "etc" / "modules" / "web", MODULE)

    def runner(self, probes: ProbePort | None = None) -> MirrorRunner:
        env = Environment(
            probes=probes or RealProbes(),
            paths=self.paths,
            cluster="c",
            local="node1",
            local_addresses={"lan": "10.0.0.1"},
            vips=self.vips,
            scripts=self.scripts,
            record=self.events.append,
            published=self._published,
            holding=lambda: None,
            peer_wait=1.0,
            node_addresses={"node1": {"lan": "10.0.0.1"}, "node2": {"lan": "10.0.0.2"}},
        )
        return MirrorRunner(self.module, env)

    def _published(self) -> None:
        self.published += 1

    def messages(self) -> list[str]:
        return [e.message for e in self.events]


async def until(cond: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    """Poll a condition of the runner (it has no event for it), with a deadline."""
    try:
        async with asyncio.timeout(limit):
            while not cond():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit} s waiting for {what}") from None


def run(
    body: Callable[[MirrorRunner], Awaitable[None]], world: World, probes: ProbePort | None = None
) -> MirrorRunner:
    async def main() -> MirrorRunner:
        r = world.runner(probes)
        task = asyncio.create_task(r.run())
        try:
            r.peer_changed(PEER_LOST, "node2 lost")
            await body(r)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return r

    return asyncio.run(main())


def test_prim_runs_prestart_adds_and_announces_the_vip_then_start_prim(tmp_path: Path) -> None:
    w = World(tmp_path)

    state_file = tmp_path / "var" / "modules" / "web" / "state.json"

    def saved_phase() -> str:
        try:
            return str(json.loads(state_file.read_text()).get("phase"))
        except (OSError, ValueError):
            return ""

    async def body(r: MirrorRunner) -> None:
        answer = await r.command(mm.Cmd.PRIM)
        assert isinstance(answer, Accepted)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")
        await until(lambda: saved_phase() == "alone", "ALONE saved")  # written on a thread

    r = run(body, w)
    assert [c.name for c in w.scripts.calls if c.name != "transition"] == ["prestart", "start_prim"]
    start = next(c for c in w.scripts.calls if c.name == "start_prim")
    assert start.args == ("WAIT", "ALONE", "prim")
    assert start.env["HAKIT_MODULE"] == "web"
    assert start.env["HAKIT_PEER"] == "node2"
    assert start.env["COLOR"] == "blue"
    assert start.env["HAKIT_VIPS"] == "10.0.0.100/24"
    assert w.vips.addresses("eth0") == ["10.0.0.1/24", "10.0.0.100/24"]
    assert len(w.vips.announced) >= 1
    saved = json.loads(state_file.read_text())
    assert saved["run"] is True
    assert saved["phase"] == "alone"
    assert saved["data"]["alone_ok"] is True
    assert saved["data"]["gen"] == 1
    assert r.status()["nodes"]["node1"]["state"] == "ALONE"


def test_failing_start_prim_cleans_up_and_stops(tmp_path: Path) -> None:
    w = World(tmp_path, FakeScriptRunner({"start_prim": 3}))

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.STOPPED, "STOP")

    run(body, w)
    names = [c.name for c in w.scripts.calls if c.name != "transition"]
    assert names == ["prestart", "start_prim", "stop_prim", "poststop"]
    stop = next(c for c in w.scripts.calls if c.name == "stop_prim")
    assert stop.args[2] == "force"  # the cleanup after a failed start is forced at once
    assert w.vips.addresses("eth0") == ["10.0.0.1/24"]
    assert any("start as primary FAILED: start_prim exited 3" in m for m in w.messages())


def test_a_vip_another_host_uses_is_not_taken_and_the_start_fails(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.vips.occupy("10.0.0.100", "02:99:00:00:00:07")  # a client's own address

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.STOPPED, "STOP")

    run(body, w)
    assert w.vips.addresses("eth0") == ["10.0.0.1/24"]
    assert w.vips.announced == []
    assert "start_prim" not in [c.name for c in w.scripts.calls]
    [(vip, probe)] = w.vips.probed
    assert (vip.address, probe.count, probe.interval, probe.peers) == (
        "10.0.0.100",
        2,
        0.05,
        ("10.0.0.2",),
    )
    assert any(
        "VIP 10.0.0.100/24 in use by MAC 02:99:00:00:00:07 on the interface holding 10.0.0.1" in m
        for m in w.messages()
    ), w.messages()


def test_a_vip_still_answered_by_the_peer_node_is_taken_over_with_a_warning(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.vips.occupy("10.0.0.100", "02:99:00:00:00:02")
    w.vips.neighbour("10.0.0.2", "02:99:00:00:00:02")  # node2's MAC, from its heartbeats

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")

    run(body, w)
    assert w.vips.addresses("eth0") == ["10.0.0.1/24", "10.0.0.100/24"]
    assert any(
        "still held by the peer node (10.0.0.2, MAC 02:99:00:00:00:02)" in m for m in w.messages()
    )


def test_stop_scripts_get_a_graceful_then_a_forced_call(tmp_path: Path) -> None:
    w = World(tmp_path, FakeScriptRunner({"stop_prim": [1, 0]}))

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")
        await r.command(mm.Cmd.STOP)
        await until(lambda: r.machine.phase is mm.Phase.STOPPED, "STOP")

    run(body, w)
    stops = [c.args for c in w.scripts.calls if c.name == "stop_prim"]
    assert stops == [("ALONE", "WAIT", "stop"), ("ALONE", "WAIT", "force")]
    assert w.vips.addresses("eth0") == ["10.0.0.1/24"]


def test_restart_of_the_daemon_reconciles_and_resumes(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def first(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")

    run(first, w)  # the "daemon" dies with the module ALONE and its VIP held
    w.scripts.calls.clear()

    async def second(r: MirrorRunner) -> None:
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE again")

    run(second, w)
    names = [c.name for c in w.scripts.calls if c.name != "transition"]
    assert names == ["stop_prim", "prestart", "start_prim"]
    assert w.scripts.calls[0].args == ("STOP", "WAIT", "force")
    assert any("reconciling: previous daemon left web alone" in m for m in w.messages())
    assert any("resuming" in m for m in w.messages())


def test_refusals_are_answered_and_recorded(tmp_path: Path) -> None:
    w = World(tmp_path)
    answers: list[Any] = []

    async def body(r: MirrorRunner) -> None:
        answers.append(await r.command(mm.Cmd.SECOND))

    run(body, w)
    assert isinstance(answers[0], Refused)
    assert "`second` needs node2 to be primary" in answers[0].message
    assert any("second refused" in m for m in w.messages())


# --- checkers ------------------------------------------------------------------------------


def checked_world(tmp_path: Path, checkers: list[dict[str, Any]], **recovery: Any) -> World:
    w = World(tmp_path)
    cfg = MODULE.model_dump(mode="json") | {"checkers": checkers}
    if recovery:
        cfg["recovery"] = recovery
    w.module = ModuleFile("web", w.module.dir, MirrorModule.model_validate(cfg))
    return w


def test_a_failing_checker_restarts_then_loop_protection_stops_the_module(tmp_path: Path) -> None:
    tcp = {"name": "web", "type": "tcp", "port": 80, "interval": 0.1, "fall": 2, "rise": 1}
    w = checked_world(tmp_path, [tcp], max=2, window=3600)
    probes = FakeProbes()

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")
        await until(lambda: probes.calls["web"] >= 2, "probes while ALONE")
        probes.set("web", False, "connection refused on 127.0.0.1:80")
        await until(lambda: r.machine.phase is mm.Phase.STOPPED, "stopped by loop protection")

    r = run(body, w, probes)
    names = [c.name for c in w.scripts.calls if c.name != "transition"]
    assert names.count("start_prim") == 3  # the start and two restarts
    text = "\n".join(w.messages())
    assert (
        "restart of web: tcp checker web failed 2 times (connection refused on 127.0.0.1:80); "
        "restart 1 of 2 in 1 h" in text
    )
    assert "restart 2 of 2 in 1 h" in text
    assert "loop protection, recovery.max 2" in text
    assert "loop protection" in r.machine.reason
    st = r.status()
    assert st["checkers"]["web"]["health"] == "idle"
    assert st["recovery"] == {"max": 2, "window": 3600.0, "used": 2}
    # vip: the implicit checker of a mirror with VIPs
    assert st["checkers"]["vip"]["action"] == "stopstart"


def test_a_vip_deleted_by_hand_makes_the_primary_stopstart(tmp_path: Path) -> None:
    w = World(tmp_path)

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")
        w.vips.remove(r.vip_list[0])
        await until(
            lambda: any("VIP 10.0.0.100/24 not on this node" in m for m in w.messages()), "seen"
        )
        await until(
            lambda: r.machine.phase is mm.Phase.ALONE and w.vips.present(r.vip_list[0]), "back"
        )

    run(body, w)
    assert any("stopstart of web: vip checker vip failed 1 time" in m for m in w.messages())


def test_maintenance_switch_is_kept_across_restarts_and_stops_the_probes(tmp_path: Path) -> None:
    tcp = {"name": "web", "type": "tcp", "port": 80, "interval": 0.1, "fall": 1}
    w = checked_world(tmp_path, [tcp])
    probes = FakeProbes()

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")
        assert await r.switch_checker("web", False) == "web: checker web off"
        calls = probes.calls["web"]
        probes.set("web", False)
        await asyncio.sleep(0.4)
        assert probes.calls["web"] == calls
        assert r.machine.phase is mm.Phase.ALONE
        with pytest.raises(KeyError, match="its checkers: web, vip"):
            await r.switch_checker("nope", True)

    r = run(body, w, probes)
    assert r.status()["checkers"]["web"]["health"] == "off"
    saved = json.loads((tmp_path / "var" / "modules" / "web" / "checkers.json").read_text())
    assert saved["off"] == ["web"]
    again = w.runner()
    assert again.status()["checkers"]["web"]["enabled"] is False
    assert any("kept from before the restart" in m for m in w.messages())


def test_a_wait_checker_releases_the_primary_role_and_resumes(tmp_path: Path) -> None:
    nic = {"name": "nic", "type": "interface", "interface": "eth0", "interval": 0.1, "fall": 1}
    nic |= {"rise": 1}
    w = checked_world(tmp_path, [nic])
    probes = FakeProbes()

    async def body(r: MirrorRunner) -> None:
        await r.command(mm.Cmd.PRIM)
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE")
        probes.set("nic", False, "eth0 has no link")
        await until(lambda: r.machine.phase is mm.Phase.WAITING, "held in WAIT")
        assert not w.vips.present(r.vip_list[0])
        assert "eth0 has no link" in r.machine.blocked
        probes.set("nic", True, "eth0 is up with its link")
        await until(lambda: r.machine.phase is mm.Phase.ALONE, "ALONE again")

    run(body, w, probes)
    assert any("leaving primary, held: interface checker nic down" in m for m in w.messages())
