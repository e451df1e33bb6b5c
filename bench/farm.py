"""The farm module, side by side in one run: what its filter costs, how fast it fails over,
how evenly it balances, and its failover next to SafeKit-like timing and keepalived.

    python bench/farm.py [--runs N] [--lab NAME] [--wrk-seconds S] [--safekit-timeouts LIST]

One lab (3 nodes, 2 networks, 1 client with 50 extra addresses) runs the farm-web example
(src/hakit/examples/farm-web, installed unchanged: nginx on node1..node3 behind VIP
10.100.1.200, rule tcp 80 by client-ip-port). Four parts:

1. **Filter cost**: HTTP requests/s measured with `wrk -t1 -c32` from client1, keep-alive
   (the filter sees established connections only) and one new connection per request
   (`Connection: close`: every request goes through the bucket hash), in interleaved runs:
   - all 3 nodes UP: through the VIP, and straight to node1's own address;
   - node2 and node3 stopped (`hakit stop farm-web`): through the VIP (the farm filter on node1
     alone), straight to node1's own address (same nginx, no farm rule on that address: the
     per-node cost of the filter is the ratio of these two; target >= 90 %), and to node2's own
     address with nginx started by hand on node2, where no farm is loaded at all (no nftables
     table, hence no conntrack): what loading the farm costs the node's other traffic; and
     through the VIP once more with the virtual MAC pinned to node1's port on the lab's switch
     (a static fdb entry: no flooding), which splits the VIP's cost into the filter rules and
     the flooding of every frame to the other nodes.
   The machine has 2 CPU cores, shared by wrk, every node's nginx and the kernel's packet path
   of every namespace: three nodes cannot serve more than one here, so read ratios.
2. **Failover**: node3's power is cut (`Lab.poweroff`: unplugged, frozen, killed) while a
   client in client1 opens new connections to the VIP every 20 ms (each given up after
   0.25 s) on two streams: from source ports that hash to node3's buckets (found before, by
   who served them) and from ephemeral ports. The failover time is from the cut to the first
   connection of the final all-success streak (1.5 s without a failure closes it), with
   hakit's own breakdown from the survivors' timelines (detection: `peer-lost`; takeover: the
   survivors accept node3's buckets). node3 is powered on again between rounds and the farm
   waits for every node UP ready with every bucket owned once; the client goes on meanwhile,
   and its failures are counted in two parts: before node3's new daemon removed the VIP and
   filter left from before the cut (`Lab.poweron` brings the links up with them in place, a
   real reboot would not), and during the handover of the buckets back to node3.
3. **Bucket balance**: the buckets each node accepts (`hakit state --json`) and the
   connections each serves out of 1200 from 50 source addresses, against its weight.
4. **Comparison**: in the same power cuts as part 2, keepalived with its VRRP defaults
   (advert_int 1; node3 MASTER priority 150, node1 BACKUP 100, preemption) moves a plain VIP
   10.100.1.201 (the same nginx answers on it) and the client probes it too; the cut is placed
   at a stratified random phase of keepalived's advert cycle. Then hakit's heartbeat is set
   like the incumbent's published farm defaults (SafeKit: pulse 100 ms; a follower is lost
   after slost_count 10 = 1 s, the master after mlost_count 20 = 2 s; every node's
   /etc/hakit/cluster.yaml rewritten, daemons restarted) and part 2 is repeated with each.

Results: tables (medians, min/max, ratios: printed, never asserted) and a JSON file
bench/results/farm-TIMESTAMP.json with the machine, the settings and every sample. The exit
status is non-zero only when something could not be measured. Everything is bounded: every wait
has a deadline, every client stops by itself, processes started here are killed by PID, all
traffic stays inside the lab, and the lab is removed in any case. Needs root; installs the
Debian packages `wrk` and `keepalived` if they are missing.
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
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    EXEC_TIMEOUT,
    KA_DIR,
    Keepalived,
    MeasureError,
    Proc,
    children_of,
    ensure_package,
    events_since,
    hakit_state,
    keepalived_version,
    result_header,
    run_and_record,
    sleep_until,
    stats,
    stratified,
    wait_for,
)

import hakit
from hakit.lab import Lab, LabError

NODES = ("node1", "node2", "node3")
CLIENT = "client1"
LOST = "node3"  # powered off in every failover round
SURVIVORS = ("node1", "node2")
MODULE = "farm-web"
EXAMPLE = Path(hakit.__file__).resolve().parent / "examples" / MODULE
BENCH_DIR = "/srv/fbench"  # in node1 (the module's copy) and client1 (the client, its logs)
WEB_ROOT = "/srv/farm-web"  # the example's nginx: pages, configuration, pid
VIP = "10.100.1.200"
OWN = {"node1": "10.100.1.11", "node2": "10.100.1.12", "node3": "10.100.1.13"}
CLIENT_ADDR = "10.100.1.101"
SOURCES = [f"10.100.1.{i}" for i in range(150, 200)]  # 50 more addresses on client1

# hakit runs module scripts with this PATH; the client gets it too (`python3` = /usr/bin's)
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# keepalived, for the comparison: a plain VIP moving from node3 to node1
KA_VIP = "10.100.1.201/24"
KA_VRID = 61
KA_PRIORITY = {LOST: 150, "node1": 100}
KA_BACKUP = "node1"
KA_ADVERT_INT = 1  # keepalived's default

# SafeKit's published farm defaults: heartbeat pulse 100 ms; a follower is lost after
# slost_count 10 pulses, the master after mlost_count 20
SAFEKIT_PULSE = 0.1
SAFEKIT_LOST = {1.0: "follower lost: slost_count 10", 2.0: "master lost: mlost_count 20"}

# filter cost
WRK_THREADS, WRK_CONNECTIONS = 1, 32
MODES = {"keepalive": "keep-alive", "new_conn": "close"}  # key -> Connection header
MODE_LABELS = {"keepalive": "keep-alive", "new_conn": "new conn/request"}

# balance
BALANCE_CONNECTIONS = 1200

# failover client
PROBE_EVERY = 0.02  # s between two attempts on each stream
PROBE_TIMEOUT = 0.25  # s, connect + request + answer
QUIET = 1.5  # s of successes on every stream that close a failover
REJOIN_TAIL = 0.5  # s the client goes on after node3 is back and everything settled
CLIENT_SECONDS = 60.0  # the client stops by itself after this
PAIR_PORT0, PAIR_COUNT, PAIR_POOL = 20000, 300, 64  # below the ephemeral range (32768-)

READY_DEADLINE = 10.0  # s, for the client to be served as expected before a cut
RECOVER_DEADLINE = 20.0  # s, for every stream to recover (expected: 1.4 s, 4.6 s)
SETTLE_DEADLINE = 60.0  # s, for the farm (and keepalived) to be back in the steady state
NGINX_DEADLINE = 10.0  # s, for the reference nginx on node2 to answer / to exit

BUCKETS = 256
FARM_STREAMS = ("node3_buckets", "any_port")
NO_FLOOD = ("vip_1_noflood",)  # measured with the virtual MAC pinned on the switch
TARGET_PCT = 90.0  # per-node filter cost: VIP (node1 alone) / node1's own address


def say(text: str = "") -> None:
    print(text, flush=True)


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# -- the client in client1 ----------------------------------------------------------------------

CLIENT_PY = """\
# bench/farm.py's client (stdlib only, every wait bounded).
#   client.py calibrate HOST PORT SRC PORT0 COUNT TIMEOUT
#     one connection from each source port PORT0.. of SRC: prints {port: [status, node]}
#   client.py probe CONFIG LOG
#     every EVERY s, one attempt per stream for DURATION s; an attempt is a new TCP connection
#     (from the stream's next source pair, or an ephemeral port), an HTTP/1.0 GET, read to
#     EOF, given up after TIMEOUT s. One line per attempt:
#     "STREAM START END RESULT NODE STATUS" (RESULT: ok, bad, timeout, error).
import asyncio
import json
import re
import socket
import struct
import sys
import time

SERVED = re.compile(rb"(?im)^x-served-by:[ \\t]*(\\S+)")
STATUS = re.compile(rb"^HTTP/1\\.[01] (\\d{3})")


def new_socket(src):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    # close with a reset: no TIME_WAIT anywhere, a source pair can be used again at once
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if src is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(src)
    return s


async def attempt(host, port, src, timeout):
    loop = asyncio.get_running_loop()
    try:
        s = new_socket(src)
    except OSError as e:
        return "error", str(e.errno), "-"

    async def get():
        await loop.sock_connect(s, (host, port))
        await loop.sock_sendall(s, b"GET / HTTP/1.0\\r\\nHost: farm\\r\\n\\r\\n")
        data = b""
        while len(data) < 1 << 20:
            chunk = await loop.sock_recv(s, 65536)
            if not chunk:
                break
            data += chunk
        return data

    try:
        data = await asyncio.wait_for(get(), timeout)
    except asyncio.TimeoutError:
        return "timeout", "-", "-"
    except OSError as e:
        return "error", str(e.errno), "-"
    finally:
        s.close()
    status = STATUS.match(data)
    served = SERVED.search(data)
    code = status.group(1).decode() if status else "-"
    if served is None:
        return "bad", "-", code
    return "ok", served.group(1).decode(errors="replace"), code


async def calibrate(host, port, src, port0, count, timeout):
    out = {}
    for p in range(port0, port0 + count):
        result, node, code = await attempt(host, port, (src, p), timeout)
        out[p] = [code, node if result == "ok" else None]
    print(json.dumps(out))


async def probe(config, log):
    with open(config) as f:
        cfg = json.load(f)
    streams = [(s["name"], s["host"], s["port"], s.get("pairs") or [None]) for s in cfg["streams"]]
    every, timeout = cfg["every"], cfg["timeout"]
    tasks = set()
    with open(log, "a", buffering=1) as out:

        async def one(name, host, port, src):
            started = time.time()
            result, node, code = await attempt(host, port, src, timeout)
            out.write(f"{name} {started:.6f} {time.time():.6f} {result} {node} {code}\\n")

        end = time.monotonic() + cfg["duration"]
        tick = time.monotonic()
        n = 0
        while time.monotonic() < end:
            for name, host, port, pairs in streams:
                pair = pairs[n % len(pairs)]
                src = tuple(pair) if pair is not None else None
                task = asyncio.create_task(one(name, host, port, src))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            n += 1
            tick += every
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=2 * timeout + 1)


if sys.argv[1] == "calibrate":
    host, port, src, port0, count, timeout = sys.argv[2:8]
    asyncio.run(calibrate(host, int(port), src, int(port0), int(count), float(timeout)))
else:
    asyncio.run(probe(sys.argv[2], sys.argv[3]))
"""


@dataclass(frozen=True)
class Attempt:
    stream: str
    start: float
    end: float
    result: str  # ok, bad, timeout, error
    node: str  # who answered, or the errno, or "-"
    status: str  # HTTP status code, or "-"

    @property
    def ok(self) -> bool:
        return self.result == "ok" and self.status == "200"


def read_attempts(path: Path) -> list[Attempt]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 6:  # else: a line being written
            with contextlib.suppress(ValueError):
                out.append(Attempt(parts[0], float(parts[1]), float(parts[2]), *parts[3:6]))
    out.sort(key=lambda a: a.start)
    return out


def recovery(attempts: list[Attempt], streams: Sequence[str], t0: float) -> dict[str, Any] | None:
    """The streams' failover around the cut at `t0`, once closed (a failure, then QUIET s of
    successes); None until then. `recovered_s`: cut -> start of the first attempt of the
    final all-success streak."""
    mine = [a for a in attempts if a.stream in streams]
    fails = [a for a in mine if not a.ok and a.end > t0]
    if not fails or not mine:
        return None
    last = max(fails, key=lambda a: a.start)
    after = [a for a in mine if a.start > last.start]  # all ok: `last` is the last failure
    if not after:
        return None
    first = after[0]
    if mine[-1].start - first.start < QUIET:
        return None
    outage = [a for a in mine if a.end > t0 and a.start <= last.start]
    return {
        "recovered_at": first.start,
        "recovered_s": first.start - t0,
        "first_failure_s": min(a.start for a in fails) - t0,
        "last_failure_s": last.start - t0,
        "attempts_during_outage": len(outage),
        "failed_attempts": dict(
            collections.Counter(
                f"{a.result} {a.node if a.result == 'error' else a.status}".strip(" -")
                for a in fails
            )
        ),
        "failures_before_cut": sum(1 for a in mine if not a.ok and a.end <= t0),
        "served_after": dict(collections.Counter(a.node for a in after)),
    }


# -- the farm as hakit shows it -----------------------------------------------------------------


def farm_state(lab: Lab, node: str) -> dict[str, Any] | None:
    st = hakit_state(lab, node)
    if st is None:
        return None
    mod = st.get("modules", {}).get(MODULE)
    return mod if isinstance(mod, dict) else None


def me(lab: Lab, node: str) -> dict[str, Any]:
    mod = farm_state(lab, node) or {}
    own = mod.get("nodes", {}).get(node, {})
    return own if isinstance(own, dict) else {}


def unsettled_farm(lab: Lab, up: Sequence[str]) -> str | None:
    """None when every node of `up` is UP ready and the others STOP, with one epoch and every
    bucket accepted by exactly one node; else what is missing."""
    epochs = set()
    total = 0
    for node in NODES:
        mod = farm_state(lab, node) if lab.hosts()[node].power == "on" else {}
        if mod is None:
            return f"{node}: no answer from hakit, or {MODULE} not loaded"
        own = mod.get("nodes", {}).get(node, {})
        state = (own.get("state"), own.get("status"))
        if node in up:
            if state != ("UP", "ready"):
                return f"{MODULE} is {state[0]} {state[1]} on {node}, not UP ready"
            epochs.add(mod.get("epoch"))
            total += int(own.get("buckets", 0))
        elif mod and state[0] != "STOP":
            return f"{MODULE} is {state[0]} {state[1]} on {node}, not STOP"
    if len(epochs) != 1 or None in epochs:
        return f"the nodes do not agree on one epoch yet ({sorted(map(str, epochs))})"
    if total != BUCKETS:
        return f"the UP nodes accept {total} buckets in all, not {BUCKETS}"
    return None


def wait_condition(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Wait (at most `timeout` s) for `check` to return None; it returns what is missing."""
    reason: list[str | None] = ["not checked"]

    def done() -> bool | None:
        reason[0] = check()
        return True if reason[0] is None else None

    try:
        wait_for(done, timeout, what, interval=0.2)
    except MeasureError as e:
        raise MeasureError(f"{e}: {reason[0]}") from e


def hakit_cmd(lab: Lab, node: str, *argv: str, timeout: float = EXEC_TIMEOUT) -> str:
    try:
        r = lab.exec(node, ["hakit", *argv], capture=True, timeout=timeout)
    except LabError as e:
        raise MeasureError(str(e)) from e
    return r.stdout.strip()


def set_heartbeat(lab: Lab, interval: float, timeout: float) -> None:
    """Rewrite every node's heartbeat interval and timeout in /etc/hakit/cluster.yaml and
    restart the daemons (every node powered off, then on: the farm resumes by itself)."""
    for node in NODES:
        path = lab.host_path(node, "/etc/hakit/cluster.yaml")
        text = path.read_text()
        for key, value in (("interval", interval), ("timeout", timeout)):
            text, n = re.subn(rf"(?m)^(  {key}:) *[0-9.]+", rf"\g<1> {value}", text)
            if n != 1:
                raise MeasureError(f"{node}: no heartbeat {key} line in {path}")
        path.write_text(text)
    for node in NODES:
        lab.poweroff(node)
    for node in NODES:
        lab.poweron(node)


def heartbeat_of(lab: Lab, node: str) -> tuple[float, float]:
    hb = (hakit_state(lab, node) or {}).get("heartbeat", {})
    try:
        return float(hb["interval"]), float(hb["timeout"])
    except (KeyError, TypeError, ValueError) as e:
        raise MeasureError(f"{node}: no heartbeat settings in `hakit state --json`") from e


ACCEPTS = re.compile(rf"^{re.escape(MODULE)}: (\S+) now accepts (\d+)/{BUCKETS} buckets")
STALE_REMOVED = re.compile(rf"^{re.escape(MODULE)}: filter \S+ removed")


def hakit_timeline(lab: Lab, t0: float) -> dict[str, Any]:
    """From the survivors' timelines since the cut: when each lost node3 (`peer-lost`) and
    when each last changed its buckets (taking node3's over), with the entries."""
    lost: dict[str, float] = {}
    took: dict[str, tuple[float, int]] = {}
    entries = {}
    for node in SURVIVORS:
        mine = []
        for e in events_since(lab, node, t0):
            msg = str(e.get("message", ""))
            if e.get("kind") == "peer-lost" and e.get("peer") == LOST:
                lost.setdefault(node, float(e["at"]))
            m = ACCEPTS.match(msg)
            if e.get("module") == MODULE and m and m.group(1) == node:
                took[node] = (float(e["at"]), int(m.group(2)))
            if e.get("module") == MODULE or e.get("peer") == LOST:
                mine.append(
                    {"s": round(float(e["at"]) - t0, 4), "kind": e.get("kind"), "message": msg}
                )
        entries[node] = mine
    return {"peer_lost": lost, "buckets": took, "entries": entries}


# -- the benchmark ------------------------------------------------------------------------------


def keepalived_conf(node: str) -> str:
    state = "MASTER" if node == LOST else "BACKUP"
    return f"""\
# keepalived for bench/farm.py: VRRP defaults, everything under {KA_DIR}
global_defs {{
    router_id {node}
    script_user root
    enable_script_security
}}
vrrp_instance farmcmp {{
    state {state}
    interface eth0
    virtual_router_id {KA_VRID}
    priority {KA_PRIORITY[node]}
    advert_int {KA_ADVERT_INT}
    virtual_ipaddress {{
        {KA_VIP}
    }}
    notify_master "{KA_DIR}/notify.sh MASTER"
    notify_backup "{KA_DIR}/notify.sh BACKUP"
    notify_fault "{KA_DIR}/notify.sh FAULT"
}}
"""


NOTIFY = f"""\
#!/bin/sh
# $1: the new VRRP state; appends "WALL-CLOCK-TIME STATE" to {KA_DIR}/states
PATH={SCRIPT_PATH}; export PATH
printf '%s %s\\n' "$(date +%s.%N)" "$1" >> {KA_DIR}/states
exit 0
"""


@dataclass
class Bench:
    lab: Lab
    ka: Keepalived
    rng: random.Random
    pairs: list[int] = field(default_factory=list)  # source ports of client1 in node3's buckets
    client: Proc | None = None
    ref_nginx: list[Proc] = field(default_factory=list)
    ka_started: dict[str, float] = field(default_factory=dict)  # node -> wall time of the start
    pinned: bool = False  # the virtual MAC pinned to node1's switch port (no flooding)

    # -- setup --

    def exec(self, host: str, argv: Sequence[str], timeout: float = EXEC_TIMEOUT) -> str:
        try:
            r = self.lab.exec(host, argv, capture=True, timeout=timeout)
        except LabError as e:
            raise MeasureError(str(e)) from e
        return r.stdout

    def install(self) -> None:
        lines = "".join(f"addr add {a}/24 dev eth0\n" for a in SOURCES)
        try:
            self.lab.exec(CLIENT, ["ip", "-batch", "-"], input=lines)
        except LabError as e:
            raise MeasureError(str(e)) from e
        d = self.lab.host_path(CLIENT, BENCH_DIR)
        d.mkdir(parents=True, exist_ok=True)
        (d / "client.py").write_text(CLIENT_PY)
        src = self.lab.host_path("node1", f"{BENCH_DIR}/{MODULE}")
        shutil.copytree(EXAMPLE, src, dirs_exist_ok=True)
        say(hakit_cmd(self.lab, "node1", "module", "install", f"{BENCH_DIR}/{MODULE}", "--all"))
        wait_condition(
            lambda: next((f"not on {n}" for n in NODES if not me(self.lab, n)), None),
            15.0,
            f"{MODULE} loaded on every node",
        )
        say(hakit_cmd(self.lab, "node1", "start", MODULE, "--all"))
        self.wait_farm(NODES)

    def wait_farm(self, up: Sequence[str]) -> None:
        wait_condition(
            lambda: unsettled_farm(self.lab, up),
            SETTLE_DEADLINE,
            f"{MODULE} UP ready on {', '.join(up)} only, every bucket owned once",
        )

    def calibrate(self) -> dict[str, Any]:
        """Who serves each source port PAIR_PORT0.. of client1: the ports of node3's buckets
        (the failover client's pairs) and the HTTP status."""
        argv = ["env", f"PATH={SCRIPT_PATH}", "python3", "-I", f"{BENCH_DIR}/client.py"]
        argv += ["calibrate", VIP, "80", CLIENT_ADDR, str(PAIR_PORT0), str(PAIR_COUNT), "1.0"]
        seen: dict[str, list[str | None]] = json.loads(self.exec(CLIENT, argv, timeout=60))
        codes = collections.Counter(str(c) for c, _ in seen.values())
        if set(codes) != {"200"}:
            raise MeasureError(f"nginx answers {dict(codes)} through the VIP, not 200")
        self.pairs = [int(p) for p, (_, node) in seen.items() if node == LOST][:PAIR_POOL]
        if len(self.pairs) < 8:
            raise MeasureError(
                f"only {len(self.pairs)} of {PAIR_COUNT} source ports hash to {LOST}"
            )
        served = collections.Counter(str(n) for _, n in seen.values())
        return {"ports": PAIR_COUNT, "served": dict(served), "codes": dict(codes)}

    # -- 1. filter cost --

    def wrk(self, url: str, mode: str, seconds: int) -> dict[str, Any]:
        argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s"]
        argv += ["--timeout", "2s", "-H", f"Connection: {MODES[mode]}", url]
        out = self.exec(CLIENT, argv, timeout=seconds + 20)
        rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        total = re.search(r"(\d+) requests in ([0-9.]+)(m?s)", out)
        if rps is None or total is None:
            raise MeasureError(f"cannot read wrk's output for {url}: {out.strip()}")
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        res: dict[str, Any] = {
            "rps": float(rps.group(1)),
            "requests": int(total.group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": dict(
                zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)
            )
            if errors
            else {},
        }
        if res["non_2xx"]:
            raise MeasureError(f"{url}: {res['non_2xx']} answers were not 2xx/3xx")
        return res

    def throughput_phase(
        self, targets: Sequence[tuple[str, str]], runs: int, seconds: int
    ) -> dict[str, dict[str, list[dict[str, Any]]]]:
        out: dict[str, dict[str, list[dict[str, Any]]]] = {
            k: {m: [] for m in MODES} for k, _ in targets
        }
        for r in range(runs):
            order = [*targets[r % len(targets) :], *targets[: r % len(targets)]]
            for key, addr in order:
                pinned = key in NO_FLOOD
                if pinned:
                    self.pin_virtual_mac(True)
                try:
                    for mode in MODES if r % 2 == 0 else reversed(list(MODES)):
                        out[key][mode].append(self.wrk(f"http://{addr}/", mode, seconds))
                finally:
                    if pinned:
                        self.pin_virtual_mac(False)
            say(
                f"  run {r + 1}/{runs}: "
                + ", ".join(
                    f"{key} {out[key]['keepalive'][-1]['rps']:.0f}/"
                    f"{out[key]['new_conn'][-1]['rps']:.0f}"
                    for key, _ in targets
                )
                + " req/s (keep-alive/new conn)"
            )
        return out

    def pin_virtual_mac(self, on: bool) -> None:
        """A static entry for the farm's virtual MAC on node1's port of the lab's switch: the
        bridge stops flooding the VIP's frames to node2 and node3 (a measurement aid only: it
        works because node1 is the only node in the farm then)."""
        mac = str((farm_state(self.lab, "node1") or {}).get("virtual_mac", ""))
        if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
            raise MeasureError(f"no virtual MAC in node1's state: {mac!r}")
        topo = self.lab.topology
        port = topo.host("node1").interface(1).port
        verb = "replace" if on else "del"
        argv = ["ip", "netns", "exec", topo.switch_netns, "bridge", "fdb", verb, mac]
        argv += ["dev", port, "master", "static"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=EXEC_TIMEOUT, check=False)
        if r.returncode != 0:
            raise MeasureError(f"`{' '.join(argv)}` exited {r.returncode}: {r.stderr.strip()}")
        self.pinned = on

    def start_ref_nginx(self) -> None:
        """nginx on node2 (its farm stopped: no nftables table there), with the config the
        farm's start_both wrote, its own pid file."""
        conf = self.lab.host_path("node2", f"{WEB_ROOT}/nginx.conf").read_text()
        conf, n = re.subn(r"(?m)^pid .*;$", f"pid {BENCH_DIR}/nginx-ref.pid;", conf)
        if n != 1:
            raise MeasureError("no pid line in node2's nginx.conf")
        d = self.lab.host_path("node2", BENCH_DIR)
        d.mkdir(parents=True, exist_ok=True)
        (d / "nginx-ref.conf").write_text(conf)
        tables = self.exec("node2", ["nft", "list", "tables"])
        if "hakit_farm" in tables:
            raise MeasureError(f"node2 still has a farm table: {tables.strip()}")
        argv = ["nginx", "-c", f"{BENCH_DIR}/nginx-ref.conf", "-g", "daemon off;"]
        pid = self.lab.spawn("node2", argv, log=d / "nginx-ref.log")
        master = Proc.of(pid)
        if master is None:
            raise MeasureError("node2: the reference nginx exited at once")
        self.ref_nginx = [master]

        def answers() -> bool | None:
            if not master.alive():
                raise MeasureError("node2: the reference nginx exited")
            r = self.lab.exec(
                CLIENT,
                ["wrk", "-t1", "-c1", "-d1s", f"http://{OWN['node2']}/"],
                capture=True,
                check=False,
                timeout=15,
            )
            return True if re.search(r"\b[1-9]\d* requests in", r.stdout) else None

        wait_for(answers, NGINX_DEADLINE, "the reference nginx on node2 answering", 0.2)
        self.ref_nginx += [p for p in map(Proc.of, children_of(pid)) if p is not None]

    def stop_ref_nginx(self) -> None:
        """SIGTERM to the master (it stops its workers), then SIGKILL by PID what is left."""
        if not self.ref_nginx:
            return
        master = self.ref_nginx[0]
        if master.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(master.pid, signal.SIGTERM)
        deadline = time.monotonic() + NGINX_DEADLINE
        while time.monotonic() < deadline and any(p.alive() for p in self.ref_nginx):
            time.sleep(0.05)
        for p in self.ref_nginx:
            p.kill()
        self.ref_nginx = []

    def filter_cost(self, runs: int, seconds: int) -> dict[str, Any]:
        say(f"1. filter cost, all 3 nodes UP ({runs} runs of {seconds} s per target and mode)")
        a = self.throughput_phase([("vip_3", VIP), ("node1_3", OWN["node1"])], runs, seconds)
        say("   stopping the farm on node2 and node3: node1 alone holds the VIP")
        for node in ("node2", "node3"):
            hakit_cmd(self.lab, node, "stop", MODULE)
        self.wait_farm(("node1",))
        self.start_ref_nginx()
        try:
            say("   node1 alone in the farm; nginx by hand on node2 (no farm there)")
            b = self.throughput_phase(
                [
                    ("vip_1", VIP),
                    ("node1_1", OWN["node1"]),
                    ("node2_nofarm", OWN["node2"]),
                    ("vip_1_noflood", VIP),
                ],
                runs,
                seconds,
            )
        finally:
            self.stop_ref_nginx()
        for node in ("node2", "node3"):
            hakit_cmd(self.lab, node, "start", MODULE)
        self.wait_farm(NODES)
        return {**a, **b}

    # -- 2. failover --

    def start_client(self, index: str, with_ka: bool) -> Path:
        streams: list[dict[str, Any]] = [
            {
                "name": "node3_buckets",
                "host": VIP,
                "port": 80,
                "pairs": [[CLIENT_ADDR, p] for p in self.pairs],
            },
            {"name": "any_port", "host": VIP, "port": 80},
        ]
        if with_ka:
            streams.append({"name": "keepalived", "host": KA_VIP.split("/")[0], "port": 80})
        cfg = {
            "every": PROBE_EVERY,
            "timeout": PROBE_TIMEOUT,
            "duration": CLIENT_SECONDS,
            "streams": streams,
        }
        d = self.lab.host_path(CLIENT, BENCH_DIR)
        (d / f"probe-{index}.json").write_text(json.dumps(cfg))
        log = d / f"probe-{index}.log"
        log.unlink(missing_ok=True)
        argv = ["env", f"PATH={SCRIPT_PATH}", "python3", "-I", f"{BENCH_DIR}/client.py", "probe"]
        argv += [f"{BENCH_DIR}/probe-{index}.json", f"{BENCH_DIR}/probe-{index}.log"]
        pid = self.lab.spawn(CLIENT, argv, log=d / "client.out")
        self.client = Proc.of(pid)
        if self.client is None:
            raise MeasureError("the failover client exited at once")

        def ready() -> bool | None:
            at = read_attempts(log)
            want = {"node3_buckets": {LOST}, "any_port": set(NODES)}
            if with_ka:
                want["keepalived"] = {LOST}
            for stream, nodes in want.items():
                last = [a for a in at if a.stream == stream][-10:]
                if len(last) < 10 or not all(a.ok and a.node in nodes for a in last):
                    return None
            return True

        wait_for(ready, READY_DEADLINE, "the failover client served as expected before the cut")
        return log

    def stop_client(self) -> None:
        if self.client is not None:
            self.client.kill()
            self.client = None

    def start_ka(self, node: str) -> None:
        self.ka_started[node] = self.ka.start(node)

    def ka_master_since(self) -> float | None:
        """When node3's keepalived, as last started, became MASTER (None: it is not)."""
        last = self.ka.last(LOST)
        if last is None or last[1] != "MASTER" or last[0] < self.ka_started.get(LOST, 0.0):
            return None  # an entry older than this keepalived is from before a power cut
        return last[0]

    def unsettled_ka(self) -> str | None:
        m, b = self.ka_master_since(), self.ka.last(KA_BACKUP)
        if m is None or b is None or b[1] != "BACKUP":
            return (
                f"keepalived: waiting for {LOST} MASTER and {KA_BACKUP} BACKUP "
                f"({KA_BACKUP} is {b and b[1]}){self.ka.log_tail(KA_BACKUP)}"
            )
        if time.time() - m < 1.5 * KA_ADVERT_INT:
            return f"keepalived: {LOST} became MASTER less than 1.5 adverts ago"
        return None

    def wait_settled(self, with_ka: bool) -> None:
        self.wait_farm(NODES)
        if with_ka:
            wait_condition(self.unsettled_ka, SETTLE_DEADLINE, "keepalived MASTER on node3")

    def cut_time(self, phase: float | None) -> float:
        """Now, or when node3's last keepalived advert left `phase` s before (a master
        advertises on entering MASTER, then every advert interval)."""
        now = time.time() + 0.05
        if phase is None:
            return now + self.rng.random() * 0.2
        m = self.ka_master_since()
        if m is None:
            raise MeasureError(f"{LOST} is not keepalived MASTER before the cut")
        return now + (phase - (now - m)) % KA_ADVERT_INT

    def round(self, tag: str, index: int, phase: float | None) -> dict[str, Any]:
        """One power cut of node3 with the client running; then node3 back on, the client
        still running until the farm (and keepalived) are settled again."""
        with_ka = phase is not None
        self.wait_settled(with_ka)
        log = self.start_client(f"{tag}-{index}", with_ka)
        streams = ["node3_buckets", "any_port", *(["keepalived"] if with_ka else [])]
        try:
            cut_at = self.cut_time(phase)
            ka_master = self.ka_master_since() if with_ka else None
            sleep_until(cut_at)
            t0 = time.time()
            killed = self.lab.poweroff(LOST)
            t1 = time.time()
            if with_ka:
                # a SIGKILLed process may still be exiting when Lab.poweroff returns
                wait_for(
                    lambda: None if any(p.alive() for p in self.ka.procs.get(LOST, [])) else True,
                    5.0,
                    f"{LOST}'s keepalived processes gone",
                )
                self.ka.forget(LOST)

            def recovered() -> dict[str, Any] | None:
                at = read_attempts(log)
                views = {s: recovery(at, (s,), t0) for s in streams}
                if with_ka and self.ka.entered(KA_BACKUP, "MASTER", t0) is None:
                    return None
                # the ephemeral-port stream may, by chance, have no failure at all
                if any(views[s] is None for s in streams if s != "any_port"):
                    return None
                if views["any_port"] is None and time.time() - t0 < 3.0:
                    return None  # give it the time to fail, if it ever does
                return views

            try:
                views = wait_for(recovered, RECOVER_DEADLINE, "every stream recovered", 0.1)
            except MeasureError as e:
                tl = hakit_timeline(self.lab, t0)
                raise MeasureError(
                    f"{tag} round {index}: {e}; survivors' timelines since the "
                    f"cut: {json.dumps(tl['entries'])}"
                ) from e
            tl = hakit_timeline(self.lab, t0)
            t_on = time.time()
            self.restore(with_ka)
            self.wait_settled(with_ka)
            t_settled = time.time()
            tail = t_settled + REJOIN_TAIL
            wait_for(
                lambda: True if any(a.start >= tail for a in read_attempts(log)) else None,
                REJOIN_TAIL + 5.0,
                "the client still running after node3 rejoined",
            )
        finally:
            self.stop_client()
        attempts = read_attempts(log)
        farm_views = [views[s] for s in ("node3_buckets", "any_port") if views[s] is not None]
        farm_at = max(v["recovered_at"] for v in farm_views)
        if set(tl["peer_lost"]) != set(SURVIVORS) or set(tl["buckets"]) != set(SURVIVORS):
            raise MeasureError(
                f"{tag} round {index}: the survivors' timelines lack peer-lost or the bucket "
                f"takeover: {json.dumps(tl['entries'])}"
            )
        detected = min(tl["peer_lost"].values())
        took = max(at for at, _ in tl["buckets"].values())
        sample: dict[str, Any] = {
            "round": index,
            "poweroff_at": t0,
            "poweroff_s": t1 - t0,
            "processes_killed": len(killed),
            "failover_s": farm_at - t0,
            "failures_before_cut": {
                s: v["failures_before_cut"] for s, v in views.items() if v is not None
            },
            "streams": views,
            "hakit": {
                "peer_lost_s": {n: at - t0 for n, at in tl["peer_lost"].items()},
                "buckets_taken_s": {n: at - t0 for n, (at, _) in tl["buckets"].items()},
                "buckets_after": {n: c for n, (_, c) in tl["buckets"].items()},
                "breakdown_s": {
                    "detection": detected - t0,
                    "takeover": took - detected,
                    "client": farm_at - took,
                },
                "timeline": tl["entries"],
            },
            "rejoin": self.rejoin_view(attempts, streams, t_on, t_settled),
        }
        if with_ka:
            master = self.ka.entered(KA_BACKUP, "MASTER", t0)
            kv = views["keepalived"]
            if master is None or ka_master is None or kv is None:
                raise MeasureError(f"{tag} round {index}: keepalived's takeover not recorded")
            sample["keepalived"] = {
                "failover_s": kv["recovered_s"],
                "phase_s": (t0 - ka_master) % KA_ADVERT_INT,
                "breakdown_s": {
                    "detection": master - t0,
                    "client": kv["recovered_at"] - master,
                },
            }
        return sample

    def rejoin_view(
        self, attempts: list[Attempt], streams: Sequence[str], t_on: float, t_settled: float
    ) -> dict[str, Any]:
        """What the client saw while node3 came back: from its power-on to REJOIN_TAIL s after
        everything was settled again (polled every 0.2 s). Failures are split at the moment
        node3's new daemon removed the VIP and filter left from before the cut
        (`stale`: `Lab.poweron` brings the links up with them still in place, which a real
        reboot would not) and the rest (`handover`: buckets moving back to node3)."""
        end = t_settled + REJOIN_TAIL
        window = [a for a in attempts if t_on <= a.start < end]
        events = events_since(self.lab, LOST, t_on)
        accepts = [
            float(e["at"])
            for e in events
            if e.get("module") == MODULE and ACCEPTS.match(str(e.get("message", "")))
        ]
        cleared = next(
            (
                float(e["at"])
                for e in events
                if e.get("module") == MODULE and STALE_REMOVED.match(str(e.get("message", "")))
            ),
            None,
        )
        last = [a for a in attempts if a.stream == "node3_buckets" and a.start >= t_settled]

        def stale(a: Attempt) -> bool:
            return cleared is not None and a.start <= cleared

        failed = [a for a in window if not a.ok]
        return {
            "settled_s": t_settled - t_on,
            "stale_state_removed_s": None if cleared is None else cleared - t_on,
            "node3_last_bucket_change_s": max(accepts) - t_on if accepts else None,
            "attempts": {s: sum(1 for a in window if a.stream == s) for s in streams},
            "failed": {s: sum(1 for a in failed if a.stream == s) for s in streams},
            "failed_stale": {
                s: sum(1 for a in failed if a.stream == s and stale(a)) for s in streams
            },
            "failed_handover": {
                s: sum(1 for a in failed if a.stream == s and not stale(a)) for s in streams
            },
            "failed_at_s": {
                s: [[round(a.start - t_on, 3), a.result, a.node] for a in failed if a.stream == s]
                for s in streams
            },
            "node3_buckets_served_by_at_end": dict(collections.Counter(a.node for a in last)),
        }

    def restore(self, with_ka: bool) -> None:
        self.lab.poweron(LOST)  # restarts hakit's daemon: the farm resumes by itself
        if with_ka:
            self.start_ka(LOST)

    def failover_series(self, tag: str, runs: int, with_ka: bool) -> list[dict[str, Any]]:
        phases: list[float | None] = (
            list(stratified(runs, self.rng, KA_ADVERT_INT)) if with_ka else [None] * runs
        )
        samples = []
        for i, phase in enumerate(phases, 1):
            s = self.round(tag, i, phase)
            samples.append(s)
            b = s["hakit"]["breakdown_s"]
            line = (
                f"  {tag} round {i}/{runs}: farm {s['failover_s']:.3f} s (detection "
                f"{b['detection']:.3f} + takeover {b['takeover']:.3f} + client "
                f"{b['client']:+.3f})"
            )
            if with_ka:
                line += f", keepalived {s['keepalived']['failover_s']:.3f} s"
            say(line)
        self.wait_settled(with_ka)
        return samples

    # -- 3. balance --

    def balance(self) -> dict[str, Any]:
        states = {n: farm_state(self.lab, n) or {} for n in NODES}
        own = {n: states[n].get("nodes", {}).get(n, {}) for n in NODES}
        weights = {n: int(own[n].get("weight", 1)) for n in NODES}
        total_w = sum(weights.values())
        expected = {n: (weights[n] / total_w if total_w else 1 / len(NODES)) for n in NODES}
        argv = [sys.executable, "-m", "hakit.lab.webclient", VIP]
        argv += ["--count", str(BALANCE_CONNECTIONS), "--timeout", "2"]
        argv += ["--sources", f"{SOURCES[0]}-{SOURCES[-1]}"]
        r = json.loads(self.exec(CLIENT, argv, timeout=180))
        served = {n: int(r.get("served", {}).get(n, 0)) for n in NODES}
        n_ok = sum(served.values())
        return {
            "weights": weights,
            "expected_share": expected,
            "buckets": {n: int(own[n].get("buckets", 0)) for n in NODES},
            "buckets_seen_by_node1": {
                n: v.get("buckets") for n, v in states["node1"].get("nodes", {}).items()
            },
            "connections": BALANCE_CONNECTIONS,
            "sources": len(SOURCES),
            "served": served,
            "failed": int(r.get("failed", 0)),
            "errors": r.get("errors", {}),
            "elapsed_s": r.get("elapsed"),
            "connection_share": {n: served[n] / n_ok if n_ok else 0.0 for n in NODES},
            "sources_per_node": {
                n: sum(1 for nodes in r.get("by_source", {}).values() if n in nodes) for n in NODES
            },
        }


# -- summary and report -------------------------------------------------------------------------


def summarize_throughput(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rps": {}, "ratios": {}}
    for key, modes in raw.items():
        out["rps"][key] = {m: stats([x["rps"] for x in runs]) for m, runs in modes.items()}
    pairs = {
        "vip_1_over_node1_1": ("vip_1", "node1_1"),
        "vip_3_over_node1_3": ("vip_3", "node1_3"),
        "node1_1_over_node2_nofarm": ("node1_1", "node2_nofarm"),
        "vip_1_over_node2_nofarm": ("vip_1", "node2_nofarm"),
        "vip_1_noflood_over_node1_1": ("vip_1_noflood", "node1_1"),
        "vip_1_over_vip_1_noflood": ("vip_1", "vip_1_noflood"),
    }
    for name, (a, b) in pairs.items():
        out["ratios"][name] = {}
        for m in MODES:
            per_run = [
                x["rps"] / y["rps"] for x, y in zip(raw[a][m], raw[b][m], strict=True) if y["rps"]
            ]
            out["ratios"][name][m] = {
                "of_medians": out["rps"][a][m]["median"] / out["rps"][b][m]["median"],
                "per_run": per_run,
                "median_of_runs": statistics.median(per_run) if per_run else None,
            }
    per_node = out["ratios"]["vip_1_over_node1_1"]
    out["target"] = {
        "vip_1_over_node1_1_at_least": TARGET_PCT / 100,
        "met": {m: per_node[m]["of_medians"] >= TARGET_PCT / 100 for m in MODES},
    }
    return out


def summarize_failover(samples: list[dict[str, Any]], with_ka: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "failover": stats([s["failover_s"] for s in samples]),
        "breakdown": {
            k: stats([s["hakit"]["breakdown_s"][k] for s in samples])
            for k in ("detection", "takeover", "client")
        },
        "node3_buckets_stream": stats(
            [s["streams"]["node3_buckets"]["recovered_s"] for s in samples]
        ),
        "failures_before_cut": sum(
            s["failures_before_cut"].get(k, 0) for s in samples for k in FARM_STREAMS
        ),
        "rejoin": {
            "settled": stats([s["rejoin"]["settled_s"] for s in samples]),
            "failed": {
                k: stats([float(s["rejoin"]["failed"][k]) for s in samples]) for k in FARM_STREAMS
            },
            "failed_total": {
                k: sum(s["rejoin"]["failed"][k] for s in samples) for k in FARM_STREAMS
            },
            "failed_handover": {
                k: stats([float(s["rejoin"]["failed_handover"][k]) for s in samples])
                for k in FARM_STREAMS
            },
            "failed_stale_total": {
                k: sum(s["rejoin"]["failed_stale"][k] for s in samples) for k in FARM_STREAMS
            },
            "failed_handover_total": {
                k: sum(s["rejoin"]["failed_handover"][k] for s in samples) for k in FARM_STREAMS
            },
            "stale_state_removed": stats(
                [
                    s["rejoin"]["stale_state_removed_s"]
                    for s in samples
                    if s["rejoin"]["stale_state_removed_s"] is not None
                ]
            ),
            "attempts_total": {
                k: sum(s["rejoin"]["attempts"][k] for s in samples) for k in FARM_STREAMS
            },
        },
    }
    anyp = [s["streams"]["any_port"] for s in samples if s["streams"]["any_port"]]
    out["any_port_stream"] = stats([v["recovered_s"] for v in anyp])
    out["any_port_failed_share"] = stats(
        [
            sum(v["failed_attempts"].values()) / v["attempts_during_outage"]
            for v in anyp
            if v["attempts_during_outage"]
        ]
    )
    if with_ka:
        out["keepalived"] = {
            "failover": stats([s["keepalived"]["failover_s"] for s in samples]),
            "breakdown": {
                k: stats([s["keepalived"]["breakdown_s"][k] for s in samples])
                for k in ("detection", "client")
            },
            "failures_before_cut": sum(
                s["failures_before_cut"].get("keepalived", 0) for s in samples
            ),
            "rejoin_failed": stats([float(s["rejoin"]["failed"]["keepalived"]) for s in samples]),
        }
    return out


def summarize_balance(b: dict[str, Any]) -> dict[str, Any]:
    dev_b = {
        n: b["buckets"][n] / BUCKETS / b["expected_share"][n] - 1
        for n in NODES
        if b["expected_share"][n]
    }
    dev_c = {
        n: b["connection_share"][n] / b["expected_share"][n] - 1
        for n in NODES
        if b["expected_share"][n]
    }
    return {
        "bucket_deviation": dev_b,
        "connection_deviation": dev_c,
        "max_abs_bucket_deviation": max(map(abs, dev_b.values())),
        "max_abs_connection_deviation": max(map(abs, dev_c.values())),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(result: dict[str, Any]) -> None:
    s, st = result["summary"], result["settings"]
    src = result["hakit_source"]
    dirty = " with uncommitted changes" if src.get("uncommitted_changes") else ""
    m = result["machine"]
    say(
        f"\nFarm benchmark: hakit {(src.get('commit') or '?')[:10]}{dirty}, lab {st['lab']} "
        f"(3 nodes, 2 networks, 1 client); load average at start "
        f"{' '.join(m['loadavg_at_start'])}, at end {' '.join(st.get('loadavg_at_end', []))}"
    )
    say(
        f"This machine has {m['nproc']} CPU cores ({m['cpu_model']}), shared by wrk, every "
        "node's nginx, the daemons and the kernel's packet path of every namespace (and other "
        "users): 3 nodes cannot serve more than 1 here; read ratios, not absolute numbers."
    )
    if "throughput" in s:
        report_throughput(s["throughput"], st)
    if "failover" in s:
        report_failover(s["failover"], st)
    if "balance" in s:
        report_balance(result["balance"], s["balance"])
    if "failover" in s:
        report_comparison(s["failover"], st)


THROUGHPUT_ROWS = (
    ("node1_1", "node1's own address (node1 alone in the farm)"),
    ("vip_1", "VIP, node1 alone in the farm"),
    ("vip_1_noflood", "VIP, node1 alone, no flooding (MAC pinned)"),
    ("node2_nofarm", "node2's own address, no farm loaded on node2"),
    ("vip_3", "VIP, all 3 nodes UP"),
    ("node1_3", "node1's own address, all 3 nodes UP"),
)


def report_throughput(t: dict[str, Any], st: dict[str, Any]) -> None:
    say(
        f"\n1. Filter cost: HTTP requests/s, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} from "
        f"{CLIENT}, {st['runs']} interleaved runs of {st['wrk_seconds']} s (medians, min-max)"
    )
    say(f"  {'target':48} {'keep-alive':>22} {'new conn/request':>22}")
    for key, label in THROUGHPUT_ROWS:
        cells = []
        for mode in MODES:
            v = t["rps"][key][mode]
            cells.append(f"{v['median']:8.0f} ({v['min']:.0f}-{v['max']:.0f})")
        say(f"  {label:48} {cells[0]:>22} {cells[1]:>22}")
    r = t["ratios"]

    def pct(name: str) -> str:
        return ", ".join(
            f"{MODE_LABELS[mode]} {100 * r[name][mode]['of_medians']:.1f} %" for mode in MODES
        )

    met = t["target"]["met"]
    say(
        "  per-node filter cost: VIP (node1 alone) / node1's own address: "
        f"{pct('vip_1_over_node1_1')}"
        f" (target >= {TARGET_PCT:.0f} %: keep-alive {verdict(met['keepalive'])}, new "
        f"connections {verdict(met['new_conn'])})"
    )
    say(
        "    of which the filter rules (VIP with the switch not flooding / node1's own address): "
        f"{pct('vip_1_noflood_over_node1_1')}"
    )
    say(
        "    and the flooding to the 2 other nodes (VIP / VIP not flooding): "
        f"{pct('vip_1_over_vip_1_noflood')}"
    )
    say(f"  VIP over 3 nodes / node1's own address (same phase): {pct('vip_3_over_node1_3')}")
    say(
        f"  node1's own address with the farm loaded (conntrack on) / node2 with no farm: "
        f"{pct('node1_1_over_node2_nofarm')}"
    )
    say(f"  VIP (node1 alone) / node2 with no farm: {pct('vip_1_over_node2_nofarm')}")
    ka = [t["rps"][k]["keepalive"]["median"] for k in ("node1_1", "vip_1", "vip_1_noflood")]
    if max(ka) / min(ka) < 1.1:
        say(
            "  (keep-alive: node1 alone runs within 10 % through every path, near what one wrk "
            "thread drives here: the new-connection mode is the one sensitive to the filter)"
        )


def setting_label(key: str, st: dict[str, Any]) -> str:
    hb = st["heartbeats"][key]
    timing = f"interval {hb['interval_s']:g} s, timeout {hb['timeout_s']:g} s"
    if key == "default":
        return f"hakit farm, lab default ({timing})"
    why = str(hb["why"]).split(":")[0]
    return f"hakit farm, SafeKit-like ({timing}: {why})"


def report_failover(f: dict[str, Any], st: dict[str, Any]) -> None:
    d = f["default"]
    hb = st["heartbeats"]["default"]
    say(
        f"\n2. Failover: power cut of {LOST} -> 100 % of new connections succeed again "
        f"(seconds; client attempts every {PROBE_EVERY * 1000:.0f} ms, {PROBE_TIMEOUT:g} s "
        f"timeout; heartbeat interval {hb['interval_s']:g} s, timeout {hb['timeout_s']:g} s)"
    )
    say(f"  {'':52}{'runs':>5}{'median':>9}{'min':>8}{'max':>8}")

    def row(label: str, v: dict[str, Any]) -> None:
        if v.get("n"):
            say(f"  {label:52}{v['n']:>5}{v['median']:>9.3f}{v['min']:>8.3f}{v['max']:>8.3f}")

    row("failover (every new connection served again)", d["failover"])
    row("  detection (cut -> first survivor's peer-lost)", d["breakdown"]["detection"])
    row("  takeover (-> both survivors accept node3's buckets)", d["breakdown"]["takeover"])
    row("  client (-> first connection of the final streak)", d["breakdown"]["client"])
    row("connections hashed to node3's buckets", d["node3_buckets_stream"])
    row("connections from ephemeral ports", d["any_port_stream"])
    share = d["any_port_failed_share"]
    if share.get("n"):
        say(
            f"  during the outage {100 * share['median']:.0f} % of the ephemeral-port "
            f"connections failed (median; node3 owned {100 / 3:.0f} % of the buckets)"
        )
    say(
        f"  target: about the heartbeat timeout + one heartbeat round = "
        f"{hb['timeout_s'] + hb['interval_s']:.2f} s: median {d['failover']['median']:.3f} s"
    )
    say(
        "  (breakdown from the survivors' timelines, whose entries are written just after the "
        "filter changes: the client part can be slightly negative)"
    )
    bad = d["failures_before_cut"]
    if bad:
        say(f"  {bad} farm attempts failed before the cut (a busy machine: see the JSON)")
    for key, v in f.items():
        rj = v["rejoin"]
        fs, fh = rj["failed_stale_total"], rj["failed_handover_total"]
        sr = rj["stale_state_removed"]
        say(
            f"  {LOST} back on ({key}, {rj['settled']['n']} rejoins): settled "
            f"{rj['settled']['median']:.2f} s after power-on (median, polled every 0.2 s"
            f"{', keepalived included' if key == 'default' else ''}); failed attempts on {LOST}'s "
            f"buckets / from ephemeral ports (of {rj['attempts_total']['node3_buckets']} / "
            f"{rj['attempts_total']['any_port']}): {fs['node3_buckets']} / {fs['any_port']} "
            f"before {LOST}'s daemon removed the VIP and filter left from before the cut"
            + (f" ({sr['median']:.2f} s after power-on)" if sr.get("n") else "")
            + f", {fh['node3_buckets']} / {fh['any_port']} during the handover back"
        )


def report_balance(b: dict[str, Any], s: dict[str, Any]) -> None:
    say(
        f"\n3. Bucket balance: buckets accepted (hakit state) and {b['connections']} connections "
        f"from {b['sources']} source addresses ({b['failed']} failed)"
    )
    say(
        f"  {'node':6}{'weight':>7}{'expected':>10}{'buckets':>9}{'share':>8}{'dev':>8}"
        f"{'conns':>8}{'share':>8}{'dev':>8}"
    )
    for n in NODES:
        say(
            f"  {n:6}{b['weights'][n]:>7}{100 * b['expected_share'][n]:>9.1f}%"
            f"{b['buckets'][n]:>9}{100 * b['buckets'][n] / BUCKETS:>7.1f}%"
            f"{100 * s['bucket_deviation'].get(n, 0):>+7.1f}%{b['served'][n]:>8}"
            f"{100 * b['connection_share'][n]:>7.1f}%"
            f"{100 * s['connection_deviation'].get(n, 0):>+7.1f}%"
        )
    say(
        f"  largest deviation from the weight: buckets {100 * s['max_abs_bucket_deviation']:.1f} %"
        f", connections {100 * s['max_abs_connection_deviation']:.1f} %"
    )


def report_comparison(f: dict[str, Any], st: dict[str, Any]) -> None:
    base = f["default"]["failover"]["median"]
    say(
        f"\n4. Comparison: power cut of {LOST} -> 100 % of new connections succeed again "
        "(seconds; same client)"
    )
    say(f"  {'':74}{'runs':>5}{'median':>8}{'min':>7}{'max':>7}{'x hakit':>9}")
    rows: list[tuple[str, dict[str, Any]]] = [
        (setting_label(k, st), v["failover"]) for k, v in f.items()
    ]
    ka = f["default"].get("keepalived")
    words = str(st["keepalived"].get("version", "")).split()
    version = f" {words[1]}" if len(words) > 1 else ""
    if ka:
        rows.append(
            (
                f"keepalived{version} VRRP defaults (advert_int {KA_ADVERT_INT}), plain VIP "
                f"{LOST} -> {KA_BACKUP}",
                ka["failover"],
            )
        )
    for label, v in rows:
        if v.get("n"):
            say(
                f"  {label:74}{v['n']:>5}{v['median']:>8.3f}{v['min']:>7.3f}{v['max']:>7.3f}"
                f"{v['median'] / base:>9.2f}"
            )
    if ka:
        kd = ka["breakdown"]
        down = st["keepalived"]["master_down_interval_s"]
        say(
            f"  keepalived: detection (cut -> notify MASTER on {KA_BACKUP}) "
            f"{kd['detection']['median']:.3f} s, then {kd['client']['median']:.3f} s to the "
            f"client (medians); Master_Down_Interval {down:.2f} s minus the advert phase"
        )
        kmed = ka["failover"]["median"]
        say(
            "  keepalived / "
            + ", ".join(
                f"{('hakit default' if k == 'default' else k)} {kmed / v['failover']['median']:.2f}"
                for k, v in f.items()
            )
        )
        rj = ka["rejoin_failed"]
        say(
            f"  when {LOST} came back, keepalived's preemption left {rj['median']:.0f} attempts "
            f"unanswered (median; {rj['min']:.0f}-{rj['max']:.0f}), the farm's handover "
            f"back {f['default']['rejoin']['failed_handover']['node3_buckets']['median']:.0f} "
            f"on {LOST}'s buckets (median; not counting the failures before {LOST}'s daemon "
            "removed its stale VIP and filter, see 2.)"
        )
        say(
            "  (keepalived moves one VIP to one node: no load sharing; the hakit farm keeps "
            "node1 and node2 serving their own connections during the whole outage)"
        )


# -- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    result["wrk_installed_by_this_run"] = ensure_package("wrk")
    result["keepalived_installed_by_this_run"] = ensure_package("keepalived")
    result["settings"]["keepalived"]["version"] = keepalived_version()
    lab = Lab(args.lab)
    if lab.status() != "absent":
        say(f"removing lab {args.lab} left by an earlier run")
        lab.down(missing_ok=True)
    ka = Keepalived(lab, keepalived_conf, {"notify.sh": NOTIFY})
    bench = Bench(lab, ka, random.Random(args.seed))
    summary: dict[str, Any] = {}
    try:
        say(f"building lab {args.lab}: 3 nodes, 2 networks, 1 client, hakit daemons")
        lab.up(3, 2, 1)
        say(f"installing {MODULE} (the example, unchanged) and starting it on every node")
        bench.install()
        result["calibration"] = bench.calibrate()
        interval, timeout = heartbeat_of(lab, "node1")
        hbs = result["settings"]["heartbeats"]
        hbs["default"] = {"interval_s": interval, "timeout_s": timeout, "why": "lab default"}

        say("3. bucket balance")
        result["balance"] = bench.balance()
        summary["balance"] = summarize_balance(result["balance"])

        raw = bench.filter_cost(args.runs, args.wrk_seconds)
        result["throughput"] = raw
        summary["throughput"] = summarize_throughput(raw)

        say(
            f"2. and 4. failover with the lab's heartbeat ({interval:g} s / {timeout:g} s), "
            "keepalived alongside"
        )
        for node in KA_PRIORITY:
            ka.setup(node)
            bench.start_ka(node)
        fo: dict[str, list[dict[str, Any]]] = {}
        result["failover"] = fo
        fo["default"] = bench.failover_series("default", args.runs, with_ka=True)
        ka.stop_all()
        for node in KA_PRIORITY:
            lab.exec(node, ["ip", "addr", "del", KA_VIP, "dev", "eth0"], check=False, capture=True)
        for t in args.safekit_timeouts:
            key = f"safekit_{t:g}s"
            say(
                f"4. failover with SafeKit-like heartbeat: pulse {SAFEKIT_PULSE:g} s, timeout "
                f"{t:g} s ({SAFEKIT_LOST.get(t, 'custom')}); restarting every daemon"
            )
            set_heartbeat(lab, SAFEKIT_PULSE, t)
            bench.wait_settled(with_ka=False)
            got = heartbeat_of(lab, "node1")
            if got != (SAFEKIT_PULSE, t):
                raise MeasureError(
                    f"the daemons run with heartbeat {got}, not {(SAFEKIT_PULSE, t)}"
                )
            hbs[key] = {
                "interval_s": SAFEKIT_PULSE,
                "timeout_s": t,
                "why": SAFEKIT_LOST.get(t, "custom"),
            }
            fo[key] = bench.failover_series(key, args.runs, with_ka=False)
        summary["failover"] = {
            k: summarize_failover(v, with_ka=(k == "default")) for k, v in fo.items()
        }
    except MeasureError:
        with contextlib.suppress(LabError, OSError):
            result["timelines"] = {
                n: [
                    {"at": e.get("at"), "kind": e.get("kind"), "message": e.get("message")}
                    for e in events_since(lab, n, 0.0)
                    if e.get("module") == MODULE or "peer" in e
                ]
                for n in NODES
            }
        raise
    finally:
        bench.stop_client()
        bench.stop_ref_nginx()
        if bench.pinned:
            with contextlib.suppress(MeasureError, OSError, subprocess.SubprocessError):
                bench.pin_virtual_mac(False)
        ka.stop_all()
        lab.down(missing_ok=True)
        result["settings"]["loadavg_at_end"] = loadavg()
    result["summary"] = summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The farm module: filter cost, failover, balance, and a comparison with "
        "SafeKit-like timing and keepalived, side by side in one run."
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="throughput runs per target and power cuts per setting (5)",
    )
    parser.add_argument("--lab", default="fb", help="lab name (fb)")
    parser.add_argument("--wrk-seconds", type=int, default=2, help="length of one wrk run (2)")
    parser.add_argument(
        "--safekit-timeouts",
        default="1.0,2.0",
        help="heartbeat timeouts (s) to try with a 0.1 s pulse, comma-separated; empty: none "
        "(1.0,2.0: SafeKit's follower and master lost)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random cut phases")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.wrk_seconds <= 30:
        parser.error("--wrk-seconds must be between 1 and 30")
    try:
        args.safekit_timeouts = [float(x) for x in args.safekit_timeouts.split(",") if x.strip()]
    except ValueError:
        parser.error("--safekit-timeouts: expected seconds separated by commas, e.g. 1.0,2.0")
    if any(not 3 * SAFEKIT_PULSE <= t <= 10 for t in args.safekit_timeouts):
        parser.error("--safekit-timeouts: each must be between 0.3 and 10 s")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if os.geteuid() != 0:
        print("bench/farm.py needs root (the lab uses namespaces)", file=sys.stderr)
        return 1

    started = datetime.datetime.now(datetime.UTC)
    skew = (256 - KA_PRIORITY[KA_BACKUP]) / 256 * KA_ADVERT_INT
    result: dict[str, Any] = {
        **result_header("farm", started),
        "settings": {
            "runs": args.runs,
            "lab": args.lab,
            "seed": args.seed,
            "wrk_seconds": args.wrk_seconds,
            "topology": "3 nodes, 2 networks, 1 client (+50 source addresses)",
            "module": {
                "name": MODULE,
                "source": str(EXAMPLE),
                "vip": VIP,
                "rules": "tcp 80 by client-ip-port",
            },
            "wrk": {
                "threads": WRK_THREADS,
                "connections": WRK_CONNECTIONS,
                "modes": {k: f"Connection: {v}" for k, v in MODES.items()},
            },
            "client": {
                "attempt_every_s": PROBE_EVERY,
                "attempt_timeout_s": PROBE_TIMEOUT,
                "attempt": "new TCP connection, HTTP/1.0 GET /, read to EOF; ok = 200 + "
                "X-Served-By",
                "streams": {
                    "node3_buckets": f"source ports of {CLIENT_ADDR} that {LOST} served before",
                    "any_port": "ephemeral source ports",
                    "keepalived": f"VIP {KA_VIP} (default settings only)",
                },
                "failover": "cut -> first attempt of the final all-success streak "
                f"({QUIET:g} s without a failure closes it)",
            },
            "power_cut": f"Lab.poweroff({LOST}): unplugged, every process frozen then killed",
            "heartbeats": {},
            "safekit": {
                "pulse_s": SAFEKIT_PULSE,
                "lost": {str(k): v for k, v in SAFEKIT_LOST.items()},
            },
            "keepalived": {
                "advert_int_s": KA_ADVERT_INT,
                "priorities": KA_PRIORITY,
                "preempt": True,
                "vip": KA_VIP,
                "master_down_interval_s": 3 * KA_ADVERT_INT + skew,
                "cut_phase": "stratified random over the advert interval",
            },
        },
        "error": None,
    }
    return run_and_record("farm", started, result, lambda: run(args, result), report)


if __name__ == "__main__":
    sys.exit(main())
