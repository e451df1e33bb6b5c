"""Client-observed failover after a power cut, hakit vs keepalived, side by side in one run.

    python bench/failover.py [--runs N] [--lab NAME] [--hakit-timeout S] [--plain-poweroff]

One lab (2 nodes, 2 networks, 1 client) runs three highly available web services at once,
each a trivial `python3 -m http.server` answering "served by NODE":

- **hakit**: a mirror module (`bfo-web`, like src/hakit/examples/mirror-web) with its own VIP
  10.100.1.110/24 and port 8081; the service runs on the primary only (start_prim/stop_prim),
  node1 primary, node2 secondary; heartbeat settings as the lab writes them (interval 0.2 s,
  timeout 1.0 s) unless `--hakit-timeout` changes them;
- **keepalived, service always running**: a VRRP instance with keepalived's default timing
  (advert_int 1; node1 MASTER priority 150, node2 BACKUP 100), VIP 10.100.1.200/24, and the
  service running on both nodes all the time on port 8082 (the usual keepalived setup);
- **keepalived, service started by notify_master**: a second VRRP instance (same timing), VIP
  10.100.1.201/24, port 8083, whose service is started by notify_master and stopped by
  notify_backup/notify_fault with the very script hakit's module uses as start_prim, so that
  the application start costs the same as hakit's.

A client process in client1 opens a new TCP connection to each VIP and sends an HTTP GET
every 20 ms (each attempt gives up after 100 ms), and logs wall time, outcome and the node
that answered. Each round cuts node1's power (every process of node1 stopped, then
`Lab.poweroff`) at a stratified random phase of keepalived's advert cycle, waits until the
client is served by node2 on the three VIPs, and measures, per service:

- unavailability: from the last answer of node1 to the first answer of node2 (client clock);
- for hakit, the steps from node2's timeline (/var/log/hakit/events.jsonl): detection (cut ->
  `peer-lost`), VIP move (-> "VIP ... added"), application start (-> "start_prim exited 0"),
  client reconnect (-> first answer from node2); also "becoming primary" and "ALONE";
- for keepalived, detection (cut -> notify_master), application start (notify instance:
  notify_master -> service answering), client reconnect.

Then node1 is powered on (the lab restarts hakit's daemon; the module rejoins as secondary),
keepalived and the always-running service are restarted on it, hakit's roles are swapped back
(`hakit swap bfo-web --node node2`) and keepalived takes MASTER back by preemption, so every
round starts from node1 primary/MASTER.

Results: a table (median / min / max per service, hakit's breakdown, ratios, whether hakit met
its target of unavailability <= timeout + 0.5 s: printed, never asserted) and a JSON file
bench/results/failover-TIMESTAMP.json with the machine, the settings and every sample. The exit
status is non-zero only when something could not be measured. Everything is bounded: every wait
has a deadline, the client stops by itself, the processes started here are killed by PID, all
traffic stays inside the lab, and the lab is removed in any case. Needs root; installs the
Debian package `keepalived` if it is missing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    DAEMON_OUT,
    EXEC_TIMEOUT,
    KA_DIR,
    Keepalived,
    MeasureError,
    Proc,
    ensure_package,
    events_since,
    freeze,
    hakit_state,
    keepalived_version,
    netns_id,
    result_header,
    run_and_record,
    sees_alive,
    sleep_until,
    stratified,
    summarize,
    wait_for,
)

from hakit.lab import Lab, LabError
from hakit.waiting import WaitTimeout, wait_until

OLD, NEW = "node1", "node2"  # node1 starts as primary / MASTER and loses its power
CLIENT = "client1"
RUN = "/run/bfo"  # pid files: a private, volatile directory (emptied at power-on, like a boot)

MODULE = "bfo-web"
MODULE_SRC = f"/srv/bfo-module/{MODULE}"  # in node1, where `hakit module install` reads it
HK_VIP, HK_PORT = "10.100.1.110/24", 8081

KA_PRIORITY = {OLD: 150, NEW: 100}
KA_ADVERT_INT = 1  # keepalived's default


@dataclass(frozen=True)
class Service:
    """One of the three highly available web services the client probes."""

    key: str  # name in the JSON and in the client's log
    label: str
    vip: str
    port: int


HAKIT = Service("hakit", "hakit (service started on failover)", HK_VIP, HK_PORT)
KA_ALWAYS = Service("keepalived", "keepalived (service always running)", "10.100.1.200/24", 8082)
KA_NOTIFY = Service(
    "keepalived_notify", "keepalived (service started by notify)", "10.100.1.201/24", 8083
)
SERVICES = (HAKIT, KA_ALWAYS, KA_NOTIFY)
KA_INSTANCES = {KA_ALWAYS.key: ("always", 51), KA_NOTIFY.key: ("notify", 52)}  # name, VRID

PROBE_EVERY = 0.02  # s between two attempts on each VIP
PROBE_TIMEOUT = 0.1  # s, connect + request + answer
CLIENT_SECONDS = 40.0  # the client stops by itself after this
CLIENT_DIR = "/srv/bfo"  # in client1

# hakit runs module scripts with this PATH (src/hakit/adapters/scripts.py); everything this
# benchmark starts in the lab gets it too, so that `python3` is the same program everywhere
# (on a machine with pyenv, the inherited PATH would find a shim that adds ~50 ms per start).
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

READY_DEADLINE = 10.0  # s, for the client to be served by node1 on every VIP before a cut
RECOVER_DEADLINE = 20.0  # s, for every service to answer from node2 (expected: 1.2 and 3.8 s)
SETTLE_DEADLINE = 60.0  # s, for everything to be back to the steady state after a round
HAKIT_WAIT = 60.0  # s, for each `hakit wait`

# -- the trivial service ------------------------------------------------------------------------

# hakit's start_prim and keepalived's notify_master run the same script (after
# src/hakit/examples/mirror-web/bin/start_prim; the pid file is in a volatile directory, so
# that a power cut cannot leave a PID that another process may have been given since).
START_WEB = """\
#!/bin/sh
# Start the trivial web service: python3 http.server answering "served by NODE" on $WEB_PORT;
# done when it accepts connections (bounded). WEB_ROOT: its files; WEB_PID: its pid file.
set -eu
node="${HAKIT_NODE:-$(hostname)}"
mkdir -p "$WEB_ROOT/www" "$(dirname "$WEB_PID")"
echo "served by $node" > "$WEB_ROOT/www/index.html"
if [ -f "$WEB_PID" ] && kill -0 "$(cat "$WEB_PID")" 2>/dev/null; then
    echo "already running"; exit 0
fi
nohup python3 -m http.server "$WEB_PORT" --bind 0.0.0.0 --directory "$WEB_ROOT/www" \\
    >"$WEB_ROOT/web.log" 2>&1 &
echo $! > "$WEB_PID"
ready="import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2)"
for _ in $(seq 50); do
    python3 -c "$ready" "$WEB_PORT" 2>/dev/null && exit 0
    sleep 0.1
done
echo "web server did not start"; exit 1
"""

STOP_WEB = """\
#!/bin/sh
# Stop the trivial web service; "force" as third argument: SIGKILL. Only the process recorded
# in $WEB_PID, if it still is our web server; a zombie (killed, not yet reaped by PID 1)
# counts as stopped.
set -u
[ -f "$WEB_PID" ] || exit 0
pid=$(cat "$WEB_PID")
case "$(tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in
    *"http.server $WEB_PORT "*) ;;
    *) rm -f "$WEB_PID"; exit 0 ;;
esac
if [ "${3:-}" = force ]; then kill -9 "$pid" 2>/dev/null; else kill "$pid" 2>/dev/null; fi
for _ in $(seq 50); do
    if ! grep -q '^State:[[:space:]]*[^Z]' "/proc/$pid/status" 2>/dev/null; then
        rm -f "$WEB_PID"; exit 0
    fi
    sleep 0.1
done
echo "web server $pid still running"; exit 1
"""

MODULE_YAML = f"""\
# bench/failover.py: a minimal mirror module like src/hakit/examples/mirror-web, with its
# own VIP and port: a web server answering with the name of the node serving it.
kind: mirror
nodes: [{OLD}, {NEW}]
vips:
  - address: {HK_VIP}
    network: net1
failover: true
default_primary: alone
scripts:
  start_timeout: 30
  stop_timeout: 30
variables:
  WEB_PORT: "{HK_PORT}"
  WEB_ROOT: /srv/{MODULE}
  WEB_PID: {RUN}/{MODULE}.pid
"""

# -- keepalived ---------------------------------------------------------------------------------


def keepalived_conf(node: str) -> str:
    state = "MASTER" if node == OLD else "BACKUP"
    blocks = []
    for svc in (KA_ALWAYS, KA_NOTIFY):
        name, vrid = KA_INSTANCES[svc.key]
        blocks.append(f"""\
vrrp_instance {name} {{
    state {state}
    interface eth0
    virtual_router_id {vrid}
    priority {KA_PRIORITY[node]}
    advert_int {KA_ADVERT_INT}
    virtual_ipaddress {{
        {svc.vip}
    }}
    notify_master "{KA_DIR}/notify.sh {name} MASTER"
    notify_backup "{KA_DIR}/notify.sh {name} BACKUP"
    notify_fault "{KA_DIR}/notify.sh {name} FAULT"
}}
""")
    return f"""\
# keepalived for bench/failover.py: default timing, everything under {KA_DIR}
global_defs {{
    router_id {node}
    script_user root
    enable_script_security
}}
""" + "".join(blocks)


NOTIFY = f"""\
#!/bin/sh
# $1: VRRP instance (always | notify), $2: its new state (MASTER | BACKUP | FAULT).
# Appends "WALL-CLOCK-TIME STATE" to states-$1. For the instance "notify", also starts the web
# service on MASTER (then appends "WALL-CLOCK-TIME STARTED" to app-notify) and stops it
# otherwise.
PATH={SCRIPT_PATH}; export PATH  # as hakit's scripts have it
printf '%s %s\\n' "$(date +%s.%N)" "$2" >> {KA_DIR}/states-$1
[ "$1" = notify ] || exit 0
export WEB_ROOT={KA_DIR}/web-notify WEB_PORT={KA_NOTIFY.port} WEB_PID={RUN}/ka-notify.pid
if [ "$2" = MASTER ]; then
    {KA_DIR}/start_web >> {KA_DIR}/web-notify.log 2>&1 &&
        printf '%s STARTED\\n' "$(date +%s.%N)" >> {KA_DIR}/app-notify
else
    {KA_DIR}/stop_web >> {KA_DIR}/web-notify.log 2>&1
fi
exit 0
"""


def states_file(svc: Service) -> str:
    return f"states-{KA_INSTANCES[svc.key][0]}"


# -- the client ---------------------------------------------------------------------------------

PROBE = """\
# bench/failover.py's client: every EVERY s, for each target NAME:HOST:PORT, a new TCP
# connection and an HTTP/1.0 GET, given up after TIMEOUT s; one line per attempt:
# "NAME START END RESULT NODE" (RESULT: ok, bad, timeout or error; NODE: who answered).
# Stops by itself after DURATION s.  Usage: probe.py LOG DURATION EVERY TIMEOUT TARGET...
import asyncio
import sys
import time


async def probe(name, host, port, timeout, out):
    started = time.time()

    async def get():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
            return await reader.read()
        finally:
            writer.close()

    try:
        data = await asyncio.wait_for(get(), timeout)
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        words = body.split()
        if head.startswith(b"HTTP/1.0 200") and len(words) == 3:
            result = "ok " + words[2].decode(errors="replace")
        else:
            result = "bad -"
    except asyncio.TimeoutError:
        result = "timeout -"
    except OSError as e:
        result = f"error {e.errno}"
    out.write(f"{name} {started:.6f} {time.time():.6f} {result}\\n")


async def main():
    log, duration, every, timeout = sys.argv[1], *map(float, sys.argv[2:5])
    targets = [(n, h, int(p)) for n, h, p in (a.split(":") for a in sys.argv[5:])]
    tasks = set()
    with open(log, "a", buffering=1) as out:
        end = time.monotonic() + duration
        tick = time.monotonic()
        while time.monotonic() < end:
            for name, host, port in targets:
                task = asyncio.create_task(probe(name, host, port, timeout, out))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            tick += every
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks)


asyncio.run(main())
"""


@dataclass(frozen=True)
class Attempt:
    target: str
    start: float
    end: float
    result: str  # ok, bad, timeout, error
    detail: str  # the node that answered, or the errno

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def read_attempts(path: Path) -> list[Attempt]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5:  # else: a line being written
            with contextlib.suppress(ValueError):
                out.append(Attempt(parts[0], float(parts[1]), float(parts[2]), *parts[3:5]))
    out.sort(key=lambda a: a.end)
    return out


def served_by_old(attempts: list[Attempt], target: str, n: int = 5) -> bool:
    """The last `n` attempts on `target` all answered by node1."""
    mine = [a for a in attempts if a.target == target]
    return len(mine) >= n and all(a.ok and a.detail == OLD for a in mine[-n:])


def client_view(attempts: list[Attempt], target: str, t0: float) -> dict[str, Any] | None:
    """What the client saw of `target` around the cut at `t0`; None until node2 answered."""
    mine = [a for a in attempts if a.target == target]
    new = [a for a in mine if a.ok and a.detail == NEW and a.end > t0]
    if not new:
        return None
    first_new = new[0].end
    old = [a for a in mine if a.ok and a.detail == OLD and a.end <= first_new]
    if not old:
        raise MeasureError(f"the client never got an answer from {OLD} on {target}")
    last_old = old[-1].end
    between = [a for a in mine if last_old < a.end < first_new]
    return {
        "last_old_answer_at": last_old,
        "first_new_answer_at": first_new,
        "unavailability_s": first_new - last_old,
        "last_old_answer_s": last_old - t0,  # from the cut (negative: before it)
        "first_new_answer_s": first_new - t0,
        "failed_attempts": dict(
            collections.Counter(f"{a.result} {a.detail}".strip(" -") for a in between)
        ),
        "failures_before_cut": sum(1 for a in mine if not a.ok and a.end < t0),
        "old_answers_after_new": sum(
            1 for a in mine if a.ok and a.detail == OLD and a.end > first_new
        ),
    }


# -- hakit's timeline ---------------------------------------------------------------------------

MARKS = ("peer_lost", "becoming_primary", "vip_added", "app_started", "alone")


def timeline_mark(e: dict[str, Any]) -> str | None:
    """Which step of a failover on node2 a timeline entry is, if any."""
    msg = str(e.get("message", ""))
    if e.get("kind") == "peer-lost" and e.get("peer") == OLD:
        return "peer_lost"
    if e.get("module") != MODULE:
        return None
    if f"{MODULE} on {NEW} becoming primary" in msg:
        return "becoming_primary"
    if msg.startswith(f"{MODULE}: VIP {HK_VIP} added"):
        return "vip_added"
    if msg.startswith(f"{MODULE}: start_prim exited 0"):
        return "app_started"
    if msg.startswith(f"{MODULE} on {NEW} ALONE:"):
        return "alone"
    return None


def hakit_timeline(lab: Lab, since: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The wall time of each failover step on node2 at or after `since`, and the entries."""
    marks: dict[str, float] = {}
    entries = []
    for e in events_since(lab, NEW, since):
        if e.get("module") == MODULE or e.get("peer") == OLD:
            entries.append(e)
        mark = timeline_mark(e)
        if mark is not None and mark not in marks:
            marks[mark] = float(e["at"])
    return marks, entries


def module_state(lab: Lab, node: str) -> tuple[str | None, str | None]:
    """(state, status) of the module on `node`, as that node's daemon reports it."""
    st = hakit_state(lab, node) or {}
    me = st.get("modules", {}).get(MODULE, {}).get("nodes", {}).get(node, {})
    return me.get("state"), me.get("status")


def wait_seen(lab: Lab, observer: str, peer: str, states: tuple[str, ...]) -> None:
    """Wait until `observer` knows the module is in one of `states` (ready) on `peer`. A role
    command checks the peer's state as the heartbeats last brought it, a few hundred ms
    behind: `hakit second` on node2 right after `hakit prim` on node1 can be refused with
    "`second` needs node1 to be primary; it is stopped" (4 of 15 setups on our machine)."""

    def seen() -> bool:
        st = hakit_state(lab, observer) or {}
        p = st.get("modules", {}).get(MODULE, {}).get("nodes", {}).get(peer, {})
        return p.get("state") in states and p.get("status") == "ready"

    try:
        wait_until(seen, 15.0, f"{observer} seeing {MODULE} {'/'.join(states)} on {peer}", 0.1)
    except WaitTimeout as e:
        raise MeasureError(str(e)) from e


def hakit(lab: Lab, node: str, *argv: str, timeout: float = EXEC_TIMEOUT) -> str:
    """`hakit ARGV` inside `node`; its output. A failure cannot be measured around."""
    try:
        r = lab.exec(node, ["hakit", *argv], capture=True, timeout=timeout)
    except LabError as e:
        raise MeasureError(str(e)) from e
    return r.stdout.strip()


def set_heartbeat(lab: Lab, interval: float | None, timeout: float | None) -> None:
    """Change the heartbeat settings the lab wrote in every node's cluster.yaml, and restart
    the daemons (a power cycle of each node, before anything else runs)."""
    for node in lab.nodes:
        path = lab.host_path(node, "/etc/hakit/cluster.yaml")
        text = path.read_text()
        for key, value in (("interval", interval), ("timeout", timeout)):
            if value is not None:
                text, n = re.subn(rf"(?m)^(  {key}:) *[0-9.]+", rf"\g<1> {value}", text)
                if n != 1:
                    raise MeasureError(f"{node}: no heartbeat {key} line in {path}")
        path.write_text(text)
    for node in lab.nodes:
        lab.poweroff(node)
        lab.poweron(node)


# -- the benchmark ------------------------------------------------------------------------------


def daemon_tail(lab: Lab, node: str, lines: int = 15) -> str:
    try:
        text = lab.host_path(node, DAEMON_OUT).read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return f"\n--- end of {node}:{DAEMON_OUT} ---\n{tail}\n---"


@dataclass
class Bench:
    lab: Lab
    ka: Keepalived
    freeze: bool = True  # SIGSTOP node1's processes before Lab.poweroff (see _common.freeze)
    web: dict[str, Proc] = field(default_factory=dict)  # keepalived's always-running service
    client: Proc | None = None

    # -- the always-running service (keepalived's usual setup) --

    def start_web(self, node: str) -> None:
        root = f"{KA_DIR}/web-always"
        www = self.lab.host_path(node, f"{root}/www")
        www.mkdir(parents=True, exist_ok=True)
        (www / "index.html").write_text(f"served by {node}\n")
        argv = ["env", f"PATH={SCRIPT_PATH}", "python3", "-m", "http.server"]
        argv += [str(KA_ALWAYS.port), "--bind", "0.0.0.0"]
        pid = self.lab.spawn(
            node,
            [*argv, "--directory", f"{root}/www"],
            log=self.lab.host_path(node, f"{root}/web.log"),
        )
        proc = Proc.of(pid)
        if proc is None:
            raise MeasureError(f"{node}: the web server on port {KA_ALWAYS.port} exited at once")
        self.web[node] = proc

    def kill_started(self) -> None:
        """Kill, by PID, the processes this benchmark started itself (not keepalived's)."""
        for p in [*self.web.values(), *([self.client] if self.client else [])]:
            p.kill()
        self.web, self.client = {}, None

    # -- steady state --

    def unsettled(self) -> str | None:
        """None in the steady state, else what is not there yet: hakit's daemons see each
        other on every network, the module is PRIM on node1 and SECOND on node2; keepalived
        has node1 MASTER (for 1.5 adverts at least) and node2 BACKUP in both instances; the
        always-running service runs on both nodes."""
        for observer, peer in ((NEW, OLD), (OLD, NEW)):
            if hakit_state(self.lab, observer) is None:
                return f"{observer}'s hakit daemon does not answer{daemon_tail(self.lab, observer)}"
            if not sees_alive(self.lab, observer, peer):
                return f"{observer}'s hakit does not see {peer} alive on every network"
        for node, want in ((OLD, "PRIM"), (NEW, "SECOND")):
            state, status = module_state(self.lab, node)
            if state != want or status != "ready":
                return f"{MODULE} is {state} ({status}) on {node}, not {want} (ready)"
        for svc in (KA_ALWAYS, KA_NOTIFY):
            m = self.ka.last(OLD, states_file(svc))
            b = self.ka.last(NEW, states_file(svc))
            if m is None or b is None or m[1] != "MASTER" or b[1] != "BACKUP":
                return (
                    f"keepalived {KA_INSTANCES[svc.key][0]}: {OLD} is {m and m[1]} and {NEW} "
                    f"is {b and b[1]} (waiting for MASTER and BACKUP){self.ka.log_tail(NEW)}"
                )
            if time.time() - m[0] < 1.5 * KA_ADVERT_INT:
                return f"keepalived: {OLD} became MASTER less than 1.5 adverts ago"
        for node, p in self.web.items():
            if not p.alive():
                return f"{node}: the always-running web server {p.pid} is gone"
        return None

    def wait_settled(self) -> None:
        reason: list[str | None] = [None]

        def settled() -> bool:
            reason[0] = self.unsettled()
            return reason[0] is None

        try:
            wait_until(settled, SETTLE_DEADLINE, "steady state", interval=0.2)
        except WaitTimeout as e:
            raise MeasureError(
                f"not back to the steady state within {SETTLE_DEADLINE:g} s: {reason[0]}"
            ) from e

    # -- the client --

    def start_client(self, index: int) -> Path:
        """Start the client for round `index`; returns its log once node1 answers every VIP."""
        log = f"{CLIENT_DIR}/probe-{index}.log"
        targets = [f"{s.key}:{s.vip.split('/')[0]}:{s.port}" for s in SERVICES]
        argv = ["env", f"PATH={SCRIPT_PATH}", "python3", "-I", f"{CLIENT_DIR}/probe.py", log]
        argv += [str(CLIENT_SECONDS), str(PROBE_EVERY), str(PROBE_TIMEOUT), *targets]
        pid = self.lab.spawn(CLIENT, argv, log=self.lab.host_path(CLIENT, f"{CLIENT_DIR}/out"))
        self.client = Proc.of(pid)
        if self.client is None:
            raise MeasureError("the client exited at once")
        path = self.lab.host_path(CLIENT, log)
        wait_for(
            lambda: (
                True if all(served_by_old(read_attempts(path), s.key) for s in SERVICES) else None
            ),
            READY_DEADLINE,
            f"the client served by {OLD} on every VIP",
        )
        return path

    def stop_client(self) -> None:
        if self.client is not None:
            self.client.kill()
            self.client = None

    # -- one round --

    def cut_time(self, phase: float) -> tuple[float, dict[str, float]]:
        """When to cut so that node1's last advert of the `always` instance left `phase` s
        before; and when node1 became MASTER in each instance (adverts count from there: a
        master advertises on entering MASTER, then every advert interval)."""
        since = {}
        for svc in (KA_ALWAYS, KA_NOTIFY):
            m = self.ka.last(OLD, states_file(svc))
            if m is None or m[1] != "MASTER":
                raise MeasureError(f"{OLD} is not keepalived MASTER before the cut")
            since[svc.key] = m[0]
        now = time.time() + 0.05
        return now + (phase - (now - since[KA_ALWAYS.key])) % KA_ADVERT_INT, since

    def round(self, index: int, phase: float, down_s: float) -> dict[str, Any]:
        self.wait_settled()
        netns = netns_id(self.lab, OLD)
        probes = self.start_client(index)
        cut_at, master_since = self.cut_time(phase)
        try:
            sleep_until(cut_at)
            t0 = time.time()
            frozen = freeze(netns) if self.freeze else []
            t_frozen = time.time()
            killed = self.lab.poweroff(OLD)
            t1 = time.time()
            self.ka.forget(OLD)
            if OLD in self.web:
                if self.web[OLD].alive():
                    raise MeasureError(f"{OLD}: the web server survived the power cut")
                del self.web[OLD]

            def recovered() -> dict[str, Any] | None:
                attempts = read_attempts(probes)
                views = {s.key: client_view(attempts, s.key, t0) for s in SERVICES}
                marks, entries = hakit_timeline(self.lab, t0)
                ka_at = {
                    s.key: self.ka.entered(NEW, "MASTER", t0, states_file(s))
                    for s in (KA_ALWAYS, KA_NOTIFY)
                }
                app = self.ka.entered(NEW, "STARTED", t0, "app-notify")
                if None in views.values() or set(MARKS) - set(marks):
                    return None
                if None in ka_at.values() or app is None:
                    return None
                app_message = next(
                    str(e["message"]) for e in entries if timeline_mark(e) == "app_started"
                )
                return {
                    "views": views,
                    "marks": marks,
                    "entries": entries,
                    "ka": ka_at,
                    "app": app,
                    "app_message": app_message,
                }

            try:
                seen = wait_for(
                    recovered, RECOVER_DEADLINE, f"every service answering from {NEW}", 0.1
                )
            except MeasureError as e:
                _, entries = hakit_timeline(self.lab, t0)
                raise MeasureError(
                    f"round {index}: {e}; hakit's timeline on {NEW} since the cut: "
                    + json.dumps(entries)
                    + self.ka.log_tail(NEW)
                ) from e
        finally:
            self.stop_client()
        sample = self.sample(index, t0, t_frozen, t1, len(frozen), len(killed), seen)
        sample["keepalived_phase_s"] = {
            k: (t0 - at) % KA_ADVERT_INT for k, at in master_since.items()
        }
        sample["keepalived_predicted_detection_s"] = {
            k: down_s - p for k, p in sample["keepalived_phase_s"].items()
        }
        self.restore()
        return sample

    def sample(
        self,
        index: int,
        t0: float,
        t_frozen: float,
        t1: float,
        frozen: int,
        killed: int,
        seen: dict[str, Any],
    ) -> dict[str, Any]:
        views: dict[str, dict[str, Any]] = seen["views"]
        marks: dict[str, float] = seen["marks"]
        hk = views[HAKIT.key]
        first = hk["first_new_answer_at"]
        hk["timeline_s"] = {k: marks[k] - t0 for k in MARKS}  # from the cut
        hk["breakdown_s"] = {
            "detection": marks["peer_lost"] - t0,
            "vip_move": marks["vip_added"] - marks["peer_lost"],
            "app_start": marks["app_started"] - marks["vip_added"],
            "client_reconnect": first - marks["app_started"],
        }
        hk["takeover_to_first_answer_s"] = first - marks["vip_added"]
        script = re.search(r"start_prim exited 0 after ([0-9.]+) s", seen["app_message"])
        hk["start_prim_reported_s"] = float(script.group(1)) if script else None
        # the script's log is named after the time (UTC) hakit created it, just before the spawn
        launch = re.search(r"/(\d{8}-\d{6}\.\d{6})-start_prim\.log", seen["app_message"])
        hk["start_prim_log_created_s"] = (
            datetime.datetime.strptime(launch.group(1), "%Y%m%d-%H%M%S.%f")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
            - t0
            if launch
            else None
        )
        hk["timeline"] = [
            {"s": round(float(e["at"]) - t0, 4), "kind": e.get("kind"), "message": e["message"]}
            for e in seen["entries"]
        ]
        for svc in (KA_ALWAYS, KA_NOTIFY):
            v = views[svc.key]
            master = seen["ka"][svc.key]
            v["notify_master_at"] = master
            v["breakdown_s"] = {"detection": master - t0}
            if svc is KA_NOTIFY:
                v["app_started_at"] = seen["app"]
                v["breakdown_s"]["app_start"] = seen["app"] - master
                v["breakdown_s"]["client_reconnect"] = v["first_new_answer_at"] - seen["app"]
            else:
                v["breakdown_s"]["client_reconnect"] = v["first_new_answer_at"] - master
            v["takeover_to_first_answer_s"] = v["first_new_answer_at"] - master
        return {
            "round": index,
            "poweroff_at": t0,
            "freeze_s": t_frozen - t0 if self.freeze else None,
            "frozen_processes": frozen,
            "poweroff_s": t1 - t0,
            "processes_killed": killed,
            **views,
        }

    def restore(self) -> None:
        """node1 back on, rejoining as secondary / BACKUP, then primary again (swap for hakit,
        preemption for keepalived)."""
        self.lab.poweron(OLD)  # restarts hakit's daemon on node1 (and waits for its API)
        self.ka.start(OLD)
        self.start_web(OLD)
        w = str(HAKIT_WAIT)
        hakit(self.lab, NEW, "wait", MODULE, "SECOND", "--node", OLD, "--timeout", w,
              timeout=HAKIT_WAIT + 10)  # fmt: skip
        wait_seen(self.lab, NEW, OLD, ("SECOND",))  # what `swap` on node2 checks
        hakit(self.lab, OLD, "swap", MODULE, "--node", NEW)
        hakit(self.lab, OLD, "wait", MODULE, "PRIM", "--timeout", w, timeout=HAKIT_WAIT + 10)
        hakit(self.lab, NEW, "wait", MODULE, "SECOND", "--timeout", w, timeout=HAKIT_WAIT + 10)


def install_module(lab: Lab) -> None:
    src = lab.host_path(OLD, MODULE_SRC)
    (src / "bin").mkdir(parents=True, exist_ok=True)
    (src / "module.yaml").write_text(MODULE_YAML)
    for name, text in (("start_prim", START_WEB), ("stop_prim", STOP_WEB)):
        (src / "bin" / name).write_text(text)
        (src / "bin" / name).chmod(0o755)
    print(hakit(lab, OLD, "module", "install", MODULE_SRC, "--all"))

    def loaded() -> bool:
        return all(module_state(lab, n)[0] == "STOP" for n in lab.nodes)

    try:
        wait_until(loaded, 15.0, f"{MODULE} loaded on every node", interval=0.2)
    except WaitTimeout as e:
        raise MeasureError(str(e)) from e
    w = str(HAKIT_WAIT)
    print(hakit(lab, OLD, "prim", MODULE))
    print(hakit(lab, OLD, "wait", MODULE, "ALONE", "--timeout", w, timeout=HAKIT_WAIT + 10))
    wait_seen(lab, NEW, OLD, ("ALONE", "PRIM"))  # what `second` on node2 checks
    print(hakit(lab, OLD, "second", MODULE, "--node", NEW))
    print(hakit(lab, OLD, "wait", MODULE, "PRIM", "--timeout", w, timeout=HAKIT_WAIT + 10))
    print(
        hakit(lab, OLD, "wait", MODULE, "SECOND", "--node", NEW, "--timeout", w,
              timeout=HAKIT_WAIT + 10)
    )  # fmt: skip


# -- report -------------------------------------------------------------------------------------


def summary_of(samples: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    def col(svc: Service, *path: str) -> list[float]:
        out = []
        for s in samples:
            v: Any = s[svc.key]
            for p in path:
                v = v[p]
            out.append(float(v))
        return out

    summary: dict[str, Any] = {}
    for svc in SERVICES:
        summary[svc.key] = {
            "unavailability": summarize(col(svc, "unavailability_s")),
            "cut_to_first_answer": summarize(col(svc, "first_new_answer_s")),
            "takeover_to_first_answer": summarize(col(svc, "takeover_to_first_answer_s")),
            "breakdown": {
                step: summarize(col(svc, "breakdown_s", step))
                for step in samples[0][svc.key]["breakdown_s"]
            },
        }
    summary[HAKIT.key]["timeline"] = {m: summarize(col(HAKIT, "timeline_s", m)) for m in MARKS}
    for key in ("start_prim_reported", "start_prim_log_created"):
        values = [s[HAKIT.key][f"{key}_s"] for s in samples]
        summary[HAKIT.key][key] = summarize([float(v) for v in values if v is not None])
    hk = summary[HAKIT.key]["unavailability"]
    target = timeout + 0.5
    met = [v <= target for v in col(HAKIT, "unavailability_s")]
    summary["target"] = {
        "hakit_unavailability_at_most_s": target,
        "median_met": hk["median_s"] <= target,
        "runs_met": sum(met),
        "runs": len(met),
    }
    for svc in (KA_ALWAYS, KA_NOTIFY):
        summary[f"ratio_{svc.key}_over_hakit"] = (
            summary[svc.key]["unavailability"]["median_s"] / hk["median_s"]
        )
    summary["poweroff_median_s"] = statistics.median(s["poweroff_s"] for s in samples)
    return summary


STEP_LABELS = {
    "detection": "detection",
    "vip_move": "VIP move",
    "app_start": "application start",
    "client_reconnect": "client reconnect",
}
STEP_SPANS = {
    HAKIT.key: {
        "detection": "power cut -> peer-lost",
        "vip_move": "peer-lost -> VIP added",
        "app_start": "VIP added -> start_prim exited 0",
        "client_reconnect": "start_prim exited 0 -> first answer",
    },
    KA_ALWAYS.key: {
        "detection": "power cut -> notify_master",
        "client_reconnect": "notify_master -> first answer",
    },
    KA_NOTIFY.key: {
        "detection": "power cut -> notify_master",
        "app_start": "notify_master -> service started",
        "client_reconnect": "service started -> first answer",
    },
}

TAKEOVER = {
    HAKIT.key: "VIP added",
    KA_ALWAYS.key: "notify_master",
    KA_NOTIFY.key: "notify_master",
}


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    hb = result["settings"]["hakit"]
    print()
    print(
        "Client-observed unavailability: last answer from node1 -> first answer from node2 "
        "(seconds)"
    )
    print(f"  {'service':<42}{'runs':>5}{'median':>9}{'min':>8}{'max':>8}")
    for svc in SERVICES:
        st = s[svc.key]["unavailability"]
        print(
            f"  {svc.label:<42}{st['n']:>5}{st['median_s']:>9.3f}{st['min_s']:>8.3f}"
            f"{st['max_s']:>8.3f}"
        )
    for svc in (KA_ALWAYS, KA_NOTIFY):
        print(f"  ratio {svc.label} / hakit (medians): {s[f'ratio_{svc.key}_over_hakit']:.2f}")
    t = s["target"]
    print(
        f"  hakit target (heartbeat interval {hb['interval_s']:g} s, timeout "
        f"{hb['timeout_s']:g} s): unavailability <= {t['hakit_unavailability_at_most_s']:.2f} s: "
        f"{'met' if t['median_met'] else 'NOT met'} by the median, "
        f"in {t['runs_met']} of {t['runs']} runs"
    )
    print(f"  the power cut itself took {s['poweroff_median_s'] * 1000:.0f} ms (median)")
    for svc in SERVICES:
        print()
        print(f"  {svc.label}: steps (medians, seconds)")
        for step, span in STEP_SPANS[svc.key].items():
            st = s[svc.key]["breakdown"][step]
            label = f"{STEP_LABELS[step]} ({span})"
            print(
                f"    {label:<60}{st['median_s']:>7.3f}  [{st['min_s']:.3f} .. {st['max_s']:.3f}]"
            )
        st = s[svc.key]["cut_to_first_answer"]
        print(f"    {'= power cut -> first answer from node2':<60}{st['median_s']:>7.3f}")
        st = s[svc.key]["takeover_to_first_answer"]
        label = f"({TAKEOVER[svc.key]} -> first answer)"
        print(f"    {label:<60}{st['median_s']:>7.3f}")
    sp, lc = s[HAKIT.key]["start_prim_reported"], s[HAKIT.key]["start_prim_log_created"]
    if sp["n"] and lc["n"]:
        print(
            f"  hakit: start_prim ran {sp['median_s']:.2f} s (as the timeline reports it); its "
            f"log was created {lc['median_s']:.3f} s after the cut (medians)"
        )
    tl = s[HAKIT.key]["timeline"]
    print()
    print("  hakit, node2's timeline from the power cut (medians, seconds): " + ", ".join(
        f"{m.replace('_', ' ')} {tl[m]['median_s']:.3f}" for m in MARKS
    ))  # fmt: skip
    for sample in result["samples"]:
        for svc in SERVICES:
            v = sample[svc.key]
            if v["old_answers_after_new"] or v["failures_before_cut"]:
                print(
                    f"  round {sample['round']}, {svc.key}: {v['failures_before_cut']} failed "
                    f"attempts before the cut, {v['old_answers_after_new']} answers from "
                    f"{OLD} after {NEW} answered (details in the JSON file)"
                )


# -- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    result["keepalived_installed_by_this_run"] = ensure_package("keepalived")
    result["settings"]["keepalived"]["version"] = keepalived_version()
    lab = Lab(args.lab)
    if lab.status() != "absent":
        print(f"removing lab {args.lab} left by an earlier run")
        lab.down(missing_ok=True)
    ka = Keepalived(lab, keepalived_conf, {"notify.sh": NOTIFY, "start_web": START_WEB,
                                           "stop_web": STOP_WEB})  # fmt: skip
    bench = Bench(lab, ka, freeze=not args.plain_poweroff)
    samples: list[dict[str, Any]] = result["samples"]
    try:
        print(f"building lab {args.lab}: 2 nodes, 2 networks, 1 client, hakit daemons")
        lab.up(2, 2, 1, private=[RUN], daemon=True)
        if args.hakit_interval is not None or args.hakit_timeout is not None:
            print("changing hakit's heartbeat settings and restarting the daemons")
            set_heartbeat(lab, args.hakit_interval, args.hakit_timeout)
        print(f"installing and starting module {MODULE} (node1 primary, node2 secondary)")
        install_module(lab)
        for node in (OLD, NEW):
            ka.setup(node)
            ka.start(node)
            bench.start_web(node)
        client = lab.host_path(CLIENT, CLIENT_DIR)
        client.mkdir(parents=True, exist_ok=True)
        (client / "probe.py").write_text(PROBE)
        print("waiting for the steady state")
        bench.wait_settled()
        hb = (hakit_state(lab, NEW) or {}).get("heartbeat", {})
        interval, timeout = float(hb["interval"]), float(hb["timeout"])
        result["settings"]["hakit"].update(
            interval_s=interval,
            timeout_s=timeout,
            target_unavailability_s=timeout + 0.5,
        )
        skew = (256 - KA_PRIORITY[NEW]) / 256 * KA_ADVERT_INT
        down = 3 * KA_ADVERT_INT + skew  # RFC 3768 Master_Down_Interval of node2
        result["settings"]["keepalived"]["master_down_interval_s"] = down
        phases = stratified(args.runs, random.Random(args.seed), KA_ADVERT_INT)
        for i, phase in enumerate(phases, 1):
            sample = bench.round(i, phase, down)
            samples.append(sample)
            hk = sample[HAKIT.key]
            b = hk["breakdown_s"]
            print(
                f"round {i}/{len(phases)}: unavailability hakit {hk['unavailability_s']:.3f} s "
                f"(detection {b['detection']:.3f} + VIP {b['vip_move']:.3f} + app "
                f"{b['app_start']:.3f} + client {b['client_reconnect']:+.3f}), keepalived "
                f"{sample[KA_ALWAYS.key]['unavailability_s']:.3f} s, keepalived+notify "
                f"{sample[KA_NOTIFY.key]['unavailability_s']:.3f} s",
                flush=True,
            )
    except MeasureError:
        # what hakit did, for the JSON file: every node's timeline (module and peer entries)
        with contextlib.suppress(LabError, OSError):
            result["timelines"] = {
                n: [
                    {"at": e.get("at"), "kind": e.get("kind"), "message": e.get("message")}
                    for e in events_since(lab, n, 0.0)
                    if e.get("module") == MODULE or "peer" in e
                ]
                for n in (OLD, NEW)
            }
        raise
    finally:
        bench.kill_started()
        ka.stop_all()
        lab.down(missing_ok=True)
    result["summary"] = summary_of(samples, result["settings"]["hakit"]["timeout_s"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Client-observed failover after a power cut, hakit vs keepalived."
    )
    parser.add_argument("--runs", type=int, default=5, help="power cuts (5)")
    parser.add_argument("--lab", default="bfo", help="lab name (bfo)")
    parser.add_argument(
        "--hakit-timeout",
        type=float,
        default=None,
        help="hakit's heartbeat timeout in s (default: what the lab writes, 1.0)",
    )
    parser.add_argument(
        "--hakit-interval",
        type=float,
        default=None,
        help="hakit's heartbeat interval in s (default: what the lab writes, 0.2)",
    )
    parser.add_argument(
        "--plain-poweroff",
        action="store_true",
        help="cut the power with Lab.poweroff alone, without freezing node1's processes first",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random cut phases")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if os.geteuid() != 0:
        print("bench/failover.py needs root (the lab uses namespaces)", file=sys.stderr)
        return 1

    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        **result_header("failover", started),
        "settings": {
            "runs": args.runs,
            "lab": args.lab,
            "seed": args.seed,
            "topology": "2 nodes, 2 networks, 1 client; node1 powered off, node2 takes over",
            "cut_phase": "stratified random over keepalived's advert interval",
            "power_cut": "Lab.poweroff" if args.plain_poweroff else "SIGSTOP all, Lab.poweroff",
            "client": {
                "attempt_every_s": PROBE_EVERY,
                "attempt_timeout_s": PROBE_TIMEOUT,
                "attempt": "new TCP connection, HTTP/1.0 GET /, read to EOF",
                "unavailability": "last answer from node1 -> first answer from node2",
            },
            "service": "python3 -m http.server answering 'served by NODE'",
            "path_in_the_lab": SCRIPT_PATH,
            "hakit": {
                "module": MODULE,
                "vip": HK_VIP,
                "port": HK_PORT,
                "service_runs": "on the primary only: start_prim at failover",
            },
            "keepalived": {
                "advert_int_s": KA_ADVERT_INT,
                "priorities": KA_PRIORITY,
                "preempt": True,
                "interface": "eth0 (net1)",
                "instances": {
                    svc.key: {
                        "name": KA_INSTANCES[svc.key][0],
                        "vrid": KA_INSTANCES[svc.key][1],
                        "vip": svc.vip,
                        "port": svc.port,
                        "service_runs": "on both nodes, always"
                        if svc is KA_ALWAYS
                        else "started by notify_master (hakit's start_prim script), "
                        "stopped by notify_backup/notify_fault",
                    }
                    for svc in (KA_ALWAYS, KA_NOTIFY)
                },
            },
        },
        "samples": [],
        "error": None,
    }
    return run_and_record("failover", started, result, lambda: run(args, result), print_report)


if __name__ == "__main__":
    sys.exit(main())
