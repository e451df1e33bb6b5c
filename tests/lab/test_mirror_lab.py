"""Mirror modules in a real lab: real daemons, real VIPs, a real TCP service behind the VIP.

Each test installs its own module (its own VIP and port) on a shared 2-node lab, so tests are
independent. Scripts record every call (name, arguments, environment) in the node's /srv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import textwrap
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from hakit.config.module import SCRIPTS
from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up, removed_after

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
]

LAB = "tmirror"
_ids = count(1)

SCRIPT = """\
#!/bin/sh
# records the call, then does the work of {name}
echo "{name} $* action=$HAKIT_ACTION module=$HAKIT_MODULE node=$HAKIT_NODE peer=$HAKIT_PEER \
color=$COLOR" >> "$ROOT/calls.log"
{body}
"""
START_PRIM = """\
mkdir -p "$ROOT/www"
[ -f "$ROOT/fail-start-$HAKIT_NODE" ] && { echo "refusing to start: marker"; exit 3; }
echo "served by $HAKIT_NODE" > "$ROOT/www/index.html"
nohup python3 -m http.server "$PORT" --bind 0.0.0.0 --directory "$ROOT/www" >/dev/null 2>&1 &
echo $! > "$ROOT/web.pid"
for _ in $(seq 50); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.2)" \
    2>/dev/null && exit 0
  sleep 0.1
done
exit 1
"""
STOP_PRIM = """\
[ -f "$ROOT/web.pid" ] || exit 0
pid=$(cat "$ROOT/web.pid"); kill -9 "$pid" 2>/dev/null
for _ in $(seq 50); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$ROOT/web.pid"; exit 0; }
  sleep 0.1
done
exit 1
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 2, 1) as lab:
        yield lab


class Module(LabModule):
    def __init__(self, lab: Lab, tmp: Path, **options: Any) -> None:
        n = next(_ids)
        super().__init__(lab, f"web{n}")
        self.vip = f"10.100.1.{150 + n}"
        self.port = 8000 + n
        self.port_repl = 7450 + n
        self.root = f"/srv/{self.name}"
        folder = tmp / self.name
        (folder / "bin").mkdir(parents=True)
        lines = [
            "kind: mirror",
            "nodes: [node1, node2]",
            "vips:",
            f"  - {{address: {self.vip}/24, network: net1}}",
            f"failover: {str(options.get('failover', True)).lower()}",
            f"default_primary: {options.get('default_primary', 'alone')}",
            "scripts: {start_timeout: 20, stop_timeout: 20}",
            f"variables: {{ROOT: {self.root}, PORT: '{self.port}', COLOR: blue}}",
            *options.get("extra", "").format(m=self).splitlines(),
        ]
        (folder / "module.yaml").write_text("\n".join(lines) + "\n")
        bodies = {"start_prim": START_PRIM, "stop_prim": STOP_PRIM}
        for s in SCRIPTS:
            p = folder / "bin" / s
            body = bodies.get(s, "exit 0")
            p.write_text(SCRIPT.format(name=s, body=body))
            p.chmod(0o755)
        for s, text in options.get("more_scripts", {}).items():  # e.g. fence
            (folder / "bin" / s).write_text(text)
            (folder / "bin" / s).chmod(0o755)
        for node in ("node1", "node2"):
            lab.exec(node, ["mkdir", "-p", self.root])
            for d in options.get("mkdirs", ()):  # e.g. a replicated directory
                lab.exec(node, ["mkdir", "-p", f"{self.root}/{d}"])
        # one command installs it on both nodes (signed API)
        lab.exec("node1", ["hakit", "module", "install", str(folder), "--all"], capture=True)
        for node in ("node1", "node2"):
            wait_until(lambda node=node: self.name in self.state(node)["modules"], 10, "loaded")  # type: ignore[misc]

    def pair(self, a: str, b: str, timeout: float = 15) -> None:
        self.wait("node1", a, timeout)
        self.wait("node2", b, timeout)

    def served_by(self, timeout: float = 1.0) -> str | None:
        code = (
            "import urllib.request,sys\n"
            f"print(urllib.request.urlopen('http://{self.vip}:{self.port}/', timeout={timeout})"
            ".read().decode().strip())"
        )
        r = self.lab.exec("client1", ["python3", "-c", code], capture=True, check=False)
        return r.stdout.strip().removeprefix("served by ") if r.returncode == 0 else None

    def has_vip(self, node: str) -> bool:
        r = self.lab.exec(node, ["ip", "-o", "addr", "show"], capture=True)
        return f" {self.vip}/24 " in r.stdout

    def calls(self, node: str) -> list[str]:
        p = self.lab.host_path(node, f"{self.root}/calls.log")
        return p.read_text().splitlines() if p.exists() else []

    def first_start(self) -> None:
        self.cmd("node1", "prim")
        self.wait("node1", "ALONE ready")
        self.cmd("node2", "second")
        self.pair("PRIM ready", "SECOND ready")

    def remove(self) -> None:
        """Stop it on both nodes (secondary first) and uninstall it."""
        for node in ("node2", "node1"):
            self.lab.exec(node, ["hakit", "stop", self.name], check=False, capture=True)
            wait_until(lambda node=node: self.me(node) == "STOP not-ready", 30, "stopped")  # type: ignore[misc]
        self.lab.exec("node2", ["hakit", "module", "uninstall", self.name, "--all"], capture=True)


@pytest.fixture
def make(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    with removed_after(lambda **options: Module(lab, tmp_path, **options)) as factory:
        yield factory


@pytest.fixture
def module(make: Any) -> Module:
    return make()  # type: ignore[no-any-return]


def test_first_start_needs_prim_then_vip_and_service_only_on_primary(module: Module) -> None:
    module.cmd("node1", "start")
    module.cmd("node2", "start")
    module.pair("WAIT not-ready", "WAIT not-ready")
    st = module.state("node1")["modules"][module.name]["nodes"]["node1"]
    assert "first start: run `hakit prim`" in st["blocked"]
    module.cmd("node1", "prim")
    module.pair("PRIM ready", "SECOND ready")
    assert module.served_by() == "node1"
    assert module.has_vip("node1")
    assert not module.has_vip("node2")
    refused = module.cmd("node2", "prim", check=False)
    assert "is secondary on node2" in refused
    assert f"`hakit swap {module.name} --node node1`" in refused


def test_poweroff_of_primary_fails_over_and_it_returns_as_secondary(module: Module) -> None:
    module.first_start()
    module.lab.poweroff("node1")
    try:
        module.wait("node2", "ALONE ready", 10)
        wait_until(lambda: module.served_by() == "node2", 10, "the client to reach node2")
        assert "failover: node1 lost" in module.log("node2")
    finally:
        module.lab.poweron("node1")
    module.pair("SECOND ready", "PRIM ready", 20)
    assert module.served_by() == "node2"
    assert not module.has_vip("node1")


def test_swap_both_ways(module: Module) -> None:
    module.first_start()
    module.cmd("node1", "swap")
    module.pair("SECOND ready", "PRIM ready")
    assert module.served_by() == "node2"
    assert "run swap on the primary" in module.cmd("node1", "swap", check=False)
    module.cmd("node2", "swap")
    module.pair("PRIM ready", "SECOND ready")
    assert module.served_by() == "node1"


def test_stop_and_start_order_the_last_primary_comes_back_primary(module: Module) -> None:
    module.first_start()
    module.cmd("node2", "stop")
    module.pair("ALONE ready", "STOP not-ready")
    module.cmd("node1", "stop")
    module.pair("STOP not-ready", "STOP not-ready")
    module.cmd("node2", "start")
    module.wait("node2", "WAIT not-ready")
    blocked = module.state("node2")["modules"][module.name]["nodes"]["node2"]["blocked"]
    assert "node1 has newer data" in blocked
    module.cmd("node1", "start")
    module.pair("PRIM ready", "SECOND ready")
    assert module.served_by() == "node1"


def test_default_primary_fails_back(lab: Lab, make: Any) -> None:
    module = make(default_primary="node1")
    module.first_start()
    lab.poweroff("node1")
    try:
        module.wait("node2", "ALONE ready", 10)
    finally:
        lab.poweron("node1")
    module.pair("PRIM ready", "SECOND ready", 25)
    assert module.served_by() == "node1"
    assert "failback: node1 is the default primary" in module.log("node2")


def test_failover_off_keeps_the_secondary_waiting(lab: Lab, make: Any) -> None:
    module = make(failover=False)
    module.first_start()
    lab.poweroff("node1")
    try:
        module.wait("node2", "WAIT not-ready", 10)
        assert module.served_by(0.5) is None
        module.cmd("node2", "prim")
        module.wait("node2", "ALONE ready")
        assert module.served_by() == "node2"
    finally:
        lab.poweron("node1")
    module.pair("SECOND ready", "PRIM ready", 20)


def test_failover_can_be_switched_at_run_time(module: Module) -> None:
    module.first_start()
    assert "failover off" in module.cmd("node2", "failover", "off")
    assert module.state("node2")["modules"][module.name]["failover"] is False
    assert "failover on" in module.cmd("node2", "failover", "on")


def test_killed_daemon_on_primary_never_leaves_two_vips(module: Module) -> None:
    lab = module.lab
    module.first_start()
    samplers = {}
    sampler = textwrap.dedent(f"""
        import subprocess, time
        end = time.monotonic() + 12
        with open("{module.root}/vip-samples", "w") as f:
            while time.monotonic() < end:
                out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
                f.write(f"{{time.time()}} {{int(' {module.vip}/24 ' in out)}}\\n")
                f.flush()
                time.sleep(0.02)
    """)
    for node in ("node1", "node2"):
        samplers[node] = lab.spawn(node, ["python3", "-c", sampler])
    time.sleep(0.5)
    os.kill(lab.daemon_pid("node1") or 0, signal.SIGKILL)
    module.wait("node2", "ALONE ready", 10)
    # the replacement daemon reconciles what the killed one left behind
    lab.spawn("node1", ["hakit", "daemon"])
    wait_until(lambda: module.me("node1") == "SECOND ready", 20, "node1 back as secondary")
    for pid in samplers.values():
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 20, "sampler end")  # type: ignore[misc]

    def intervals(node: str) -> list[tuple[float, float]]:
        rows = lab.host_path(node, f"{module.root}/vip-samples").read_text().split("\n")
        samples = [(float(t), v == "1") for t, v in (r.split() for r in rows if r)]
        out, start, prev = [], None, 0.0
        for t, present in samples:
            if present and start is None:
                start = prev  # it may have appeared right after the previous sample
            if not present and start is not None:
                out.append((start, t))
                start = None
            prev = t
        if start is not None:
            out.append((start, float("inf")))
        return out

    one, two = intervals("node1"), intervals("node2")
    assert one, "node1 held the VIP at the start"
    assert two, "node2 holds the VIP at the end"
    for a0, a1 in one:
        for b0, b1 in two:
            assert a1 <= b0 or b1 <= a0, f"VIP on both nodes: node1 {a0}-{a1}, node2 {b0}-{b1}"
    assert module.served_by() == "node2"


def test_scripts_order_arguments_and_environment(module: Module) -> None:
    module.first_start()
    module.cmd("node1", "stop")
    module.pair("STOP not-ready", "ALONE ready")
    calls = [c for c in module.calls("node1") if not c.startswith("transition")]
    names = [c.split()[0] for c in calls]
    assert names == ["prestart", "start_prim", "stop_prim", "poststop"]
    assert calls[0].startswith("prestart STOP WAIT prim action=prim")
    assert calls[1].startswith("start_prim WAIT ALONE prim action=prim")
    assert calls[2].startswith("stop_prim PRIM WAIT stop action=stop")
    assert f"module={module.name} node=node1 peer=node2 color=blue" in calls[1]
    transitions = [c for c in module.calls("node1") if c.startswith("transition")]
    assert transitions[0].startswith("transition STOP WAIT")
    calls2 = [c.split()[0] for c in module.calls("node2") if not c.startswith("transition")]
    assert calls2 == ["prestart", "start_second", "stop_second", "start_prim"]


def test_failing_start_prim_stops_the_node_and_the_other_takes_over(module: Module) -> None:
    lab = module.lab
    module.first_start()
    module.cmd("node1", "swap")
    module.pair("SECOND ready", "PRIM ready")
    lab.exec("node1", ["touch", f"{module.root}/fail-start-node1"])
    module.cmd("node2", "swap")
    module.pair("STOP not-ready", "ALONE ready", 20)
    log = module.log("node1")
    assert "start as primary FAILED: start_prim exited 3" in log
    assert module.served_by() == "node2"
    assert not module.has_vip("node1")


def test_commands_on_another_node_and_on_all_nodes(module: Module) -> None:
    lab = module.lab
    module.cmd("node1", "prim")
    module.wait("node1", "ALONE ready")
    assert "node2: " in module.cmd("node1", "second", "--node", "node2")
    module.pair("PRIM ready", "SECOND ready")
    started = time.time()
    module.cmd("node1", "stop", "--all")  # the secondary first: no useless failover
    module.pair("STOP not-ready", "STOP not-ready")
    takeovers = [line for line in module.log("node2").splitlines() if "becoming primary" in line]
    assert all(
        time.mktime(time.strptime(t[:19], "%Y-%m-%d %H:%M:%S")) < started - 1 for t in takeovers
    )
    module.cmd("node2", "start", "--all")
    module.pair("PRIM ready", "SECOND ready")  # node1 was primary last
    remote = lab.exec("node2", ["hakit", "state", "--json", "--node", "node1"], capture=True)
    assert json.loads(remote.stdout)["node"] == "node1"
    # a client without a certificate of the cluster is a tool: without an API token, its
    # command is refused (401) before anything is read or done
    code = (
        "import socket, ssl\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
        "ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE\n"
        "try:\n"
        "    s = ctx.wrap_socket(socket.create_connection(('10.100.1.11', 7351), 2))\n"
        "    s.sendall(b'POST /v1/modules/x/stop HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "    data = b''\n"
        "    while chunk := s.recv(4096):\n"
        "        data += chunk\n"
        "    print(data.decode())\n"
        "except (OSError, ssl.SSLError) as e:\n    print('refused', type(e).__name__)\n"
    )
    r = lab.exec("client1", ["python3", "-c", code], capture=True)
    assert r.stdout.startswith("HTTP/1.1 401 Unauthorized"), r.stdout
    assert "an API token is required" in r.stdout, r.stdout


def test_vip_removed_by_hand_on_the_primary_triggers_a_failover(module: Module) -> None:
    module.first_start()
    module.lab.exec("node1", ["ip", "addr", "del", f"{module.vip}/24", "dev", "eth0"])
    module.pair("SECOND ready", "PRIM ready", 20)
    log = module.log("node1")
    assert f"VIP {module.vip}/24 not on this node" in log
    assert "stopstart of " in log
    assert module.served_by() == "node2"


# --- checkers ------------------------------------------------------------------------------


def app_pid(m: Module, node: str) -> int:
    return int(m.lab.host_path(node, f"{m.root}/web.pid").read_text())


def kill_app(m: Module, node: str) -> int:
    pid = app_pid(m, node)
    m.lab.exec(node, ["kill", "-9", str(pid)])
    return pid


def new_app(m: Module, node: str, old: int, timeout: float = 15) -> None:
    def restarted() -> bool:
        p = m.lab.host_path(node, f"{m.root}/web.pid")
        return p.exists() and p.read_text().strip() not in ("", str(old))

    wait_until(restarted, timeout, f"the application restarted on {node}")


PROCESS_CHECKER = """\
checkers:
  - {{name: app, type: process, regex: "http.server {m.port} ", interval: 0.3, fall: 2, rise: 1}}
recovery: {{max: 2, window: 3600}}
"""


def test_a_killed_process_is_restarted_locally_then_loop_protection_fails_over(
    make: Any,
) -> None:
    m = make(extra=PROCESS_CHECKER)
    m.first_start()
    for n in (1, 2):
        old = kill_app(m, "node1")
        new_app(m, "node1", old)
        m.pair("PRIM ready", "SECOND ready")
        assert m.served_by() == "node1"
        assert f"restart {n} of 2 in 1 h" in m.log("node1")
    kill_app(m, "node1")
    m.pair("STOP not-ready", "ALONE ready", 20)
    assert m.served_by() == "node2"
    log = m.log("node1")
    assert "process checker app failed 2 times (0 processes /http.server" in log
    assert "loop protection, recovery.max 2" in log
    st = m.state("node1")["modules"][m.name]
    assert "loop protection" in st["nodes"]["node1"]["reason"]
    # an operator start resets the count; it comes back as secondary
    m.cmd("node1", "start")
    m.pair("SECOND ready", "PRIM ready")
    assert m.state("node1")["modules"][m.name]["recovery"]["used"] == 0


FLAP_CHECKER = """\
checkers:
  - name: file
    type: custom
    command: [test, -e, "{m.root}/ok"]
    interval: 0.3
    fall: 4
    rise: 1
    action: stopstart
"""


def test_one_failed_probe_does_nothing_and_a_maintenance_switch_silences_a_checker(
    make: Any,
) -> None:
    m = make(extra=FLAP_CHECKER)
    for node in ("node1", "node2"):
        m.lab.exec(node, ["touch", f"{m.root}/ok"])
    m.first_start()
    wait_until(
        lambda: m.state("node1")["modules"][m.name]["checkers"]["file"]["health"] == "up",
        10,
        "checker up",
    )
    m.lab.exec("node1", ["rm", f"{m.root}/ok"])
    wait_until(
        lambda: m.state("node1")["modules"][m.name]["checkers"]["file"]["bad"] >= 1, 5, "a failure"
    )
    m.lab.exec("node1", ["touch", f"{m.root}/ok"])
    wait_until(
        lambda: m.state("node1")["modules"][m.name]["checkers"]["file"]["good"] >= 2, 5, "ok again"
    )
    assert m.me("node1") == "PRIM ready"
    assert "stopstart of" not in m.log("node1")
    # maintenance: nothing happens while the checker is off
    r = m.lab.exec("node1", ["hakit", "checker", "off", m.name, "file"], capture=True)
    assert r.stdout.strip() == f"{m.name}: checker file off"
    m.lab.exec("node1", ["rm", f"{m.root}/ok"])
    time.sleep(2.0)  # longer than fall × interval: the checker must stay silent
    assert m.me("node1") == "PRIM ready"
    assert m.state("node1")["modules"][m.name]["checkers"]["file"]["health"] == "off"
    m.lab.exec("node1", ["touch", f"{m.root}/ok"])
    r = m.lab.exec("node1", ["hakit", "checker", "on", m.name, "file"], capture=True)
    assert "checker file on" in r.stdout
    wait_until(
        lambda: m.state("node1")["modules"][m.name]["checkers"]["file"]["health"] == "up",
        10,
        "checker up again",
    )
    m.lab.exec("node1", ["rm", f"{m.root}/ok"])
    m.pair("SECOND ready", "PRIM ready", 20)  # stopstart: failover, back as secondary
    assert "stopstart of" in m.log("node1")


NIC_CHECKER = """\
checkers:
  - {{name: nic, type: interface, interface: eth1, when: every-node, interval: 0.2, fall: 2,
      rise: 2}}
"""


def test_an_interface_without_link_makes_the_primary_wait_and_it_resumes_as_secondary(
    make: Any,
) -> None:
    m = make(extra=NIC_CHECKER)
    m.first_start()
    m.lab.exec("node1", ["ip", "link", "set", "eth1", "down"])
    try:
        m.pair("WAIT not-ready", "ALONE ready", 15)
        assert m.served_by() == "node2"
        blocked = m.state("node1")["modules"][m.name]["nodes"]["node1"]["blocked"]
        assert "interface checker nic down (eth1 is down)" in blocked
    finally:
        m.lab.exec("node1", ["ip", "link", "set", "eth1", "up"])
    m.pair("SECOND ready", "PRIM ready", 20)


HTTP_CHECKER = """\
checkers:
  - {{name: web, type: http, url: "http://127.0.0.1:{m.port}/", body: "served by",
      interval: 0.3, fall: 2, rise: 1, action: stopstart}}
"""


def test_a_wrong_http_answer_fails_over(make: Any) -> None:
    m = make(extra=HTTP_CHECKER)
    m.first_start()
    m.lab.exec("node1", ["sh", "-c", f"echo maintenance > {m.root}/www/index.html"])
    m.pair("SECOND ready", "PRIM ready", 20)
    assert m.served_by() == "node2"
    assert "without /served by/ in its body" in m.log("node1")


def test_a_module_waits_before_starting_for_the_module_it_depends_on(make: Any) -> None:
    db = make()
    app = make(
        extra=(
            "checkers:\n"
            f"  - {{{{name: db, type: module, module: {db.name}, when: before-start, "
            "interval: 0.3, rise: 1}}\n"
        )
    )
    app.cmd("node1", "prim")
    wait_until(lambda: app.me("node1") == "WAIT not-ready", 10, "app waits")
    blocked = app.state("node1")["modules"][app.name]["nodes"]["node1"]["blocked"]
    assert "module checker db" in blocked
    assert not app.has_vip("node1")
    db.first_start()
    app.wait("node1", "ALONE ready", 15)
    assert app.served_by() == "node1"
    # the dependency goes away: the application stops and waits again
    db.cmd("node1", "stop")
    db.cmd("node2", "stop")
    app.wait("node1", "WAIT not-ready", 15)
    assert not app.has_vip("node1")


PING_CHECKER = """\
checkers:
  - {{name: gw, type: ping, address: 10.100.1.101, when: every-node, interval: 0.2, timeout: 0.2,
      fall: 2, rise: 2}}
"""


def test_a_node_that_cannot_reach_the_clients_router_hands_over(make: Any) -> None:
    m = make(extra=PING_CHECKER)
    m.first_start()
    m.lab.cut("node1", "client1")
    try:
        m.pair("WAIT not-ready", "ALONE ready", 15)
        assert "ping checker gw down (ping 10.100.1.101: no answer within" in m.log("node1")
    finally:
        m.lab.heal("node1", "client1")
    m.pair("SECOND ready", "PRIM ready", 20)
    assert m.served_by() == "node2"


HOLD_PORT = """
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("HOLDING", flush=True)
time.sleep(120)  # bounded; the test kills it by PID
"""


def test_a_secondary_that_cannot_listen_makes_the_primary_say_unprotected(make: Any) -> None:
    """Issue 12, finding 7: a replication that cannot start is a loud state on the primary,
    not "ALONE ready" with the reason only in the other node's log."""
    m = make(
        extra="replication:\n  port: {m.port_repl}\n  dirs:\n    - path: {m.root}/data",
        mkdirs=["data"],
    )
    lab = m.lab
    out = lab.host_path("node2", "/tmp/hold-port.out")
    out.unlink(missing_ok=True)
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    holder = lab.spawn(
        "node2", [python, "-c", HOLD_PORT, lab.address("node2", 1), str(m.port_repl)], out
    )
    try:
        wait_until(lambda: "HOLDING" in out.read_text() if out.exists() else None, 10, "held")
        m.cmd("node1", "prim")
        m.wait("node1", "ALONE ready")
        m.cmd("node2", "second", check=False)
        m.wait("node2", "STOP not-ready", 30)

        def unprotected() -> str | None:
            why: str | None = m.state("node1")["modules"][m.name].get("unprotected")
            return why

        why = wait_until(unprotected, 10, "node1 says it is unprotected")
        assert why is not None
        assert why.startswith("not replicated: node2 cannot become secondary: start_second failed")
        assert "in use" in why, why
        shown = lab.exec("node1", ["hakit", "state"], capture=True).stdout
        assert "UNPROTECTED" in shown, shown
        assert "not replicated: node2 cannot become secondary" in m.log("node1")
    finally:
        os.kill(holder, signal.SIGKILL)
    m.cmd("node2", "second")
    m.pair("PRIM ready", "SECOND ready", 30)
    assert m.state("node1")["modules"][m.name]["unprotected"] is None
