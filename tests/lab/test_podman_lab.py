"""The podman template with a real container: every acknowledged record survives a failover.

A tiny image is built at test time from Debian's busybox-static (nothing can be downloaded):
imported into node1's own podman storage, then `podman save | podman load` into node2's, as
the template's page tells users to do (podman's storage is per node, not replicated). The
container runs on the primary with its volume in the replicated directory: it appends
numbered records to a file, fsyncs it, and only then publishes the number, which a client on
client1 polls through the VIP and records on the test machine (outside the node that dies).
node1 is powered off; node2 is ALONE, the container starts there from the replicated volume,
and every acknowledged record must be in it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit import templates
from hakit.daemon.packages import PACKAGE_SUFFIX, package_bytes
from hakit.lab.lab import Lab
from hakit.waiting import wait_until
from tests.lab.modules import LabModule, lab_up, sh

BUSYBOX = Path("/bin/busybox")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not shutil.which("podman"), reason="podman not installed"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static not installed"),
]

LAB = "tpod"
VIP = "10.100.1.170"
PORT = 8470
NAME = "pod"
IMAGE = "localhost/hakit-busybox:latest"
VOLUMES = f"/srv/{NAME}/volumes"
# podman's storage, private to each lab node as it is to each server (/run/...: emptied at
# power-on, like a tmpfs at boot)
PRIVATE = ["/var/lib/containers", "/run/containers", "/run/libpod"]
# This machine's quirks, not the template's: no CAP_SYS_RESOURCE (podman's default rlimits
# for root cannot be set), and the lab's nodes share /dev/shm (podman's default shm locks
# would be shared between the nodes' podmans: file locks, in each node's PODMAN_TMPDIR).
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
lock_type = "file"
"""
# The application: each number is appended with the name of the node that wrote it, and
# fsynced, before it is published.
WRITER = f"""\
#!/bin/sh
trap 'exit 0' TERM  # podman stop: a clean exit (PID 1 has no default action for SIGTERM)
cd /data
mkdir -p www
i=$(cut -d ' ' -f 1 records 2>/dev/null | sort -n | tail -n 1)
i=${{i:-0}}
httpd -p {PORT} -h /data/www
while :; do
    i=$((i + 1))
    echo "$i $(hostname)" >> records  # --uts host: the node's name
    sync records
    echo "$i" > www/acked.new && mv www/acked.new www/acked
    usleep 20000
done
"""
CLIENT = """\
import sys, time, urllib.request
url, acked_path = sys.argv[1], sys.argv[2]
last = None
with open(acked_path, "w") as acked:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                n = r.read().decode().strip()
        except Exception:
            time.sleep(0.05)
            continue
        if n and n != last:
            acked.write(n + "\\n")
            acked.flush()
            last = n
        time.sleep(0.05)
"""


def podman(conf: Path) -> str:
    return f"CONTAINERS_CONF={conf} podman --cgroup-manager cgroupfs --events-backend file"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(LAB, 2, 1, 1, private=PRIVATE) as lab:
        for node in ("node1", "node2"):
            # crun refuses a hybrid cgroup hierarchy whose cgroup v2 part has controllers (this
            # machine's): the v1 hierarchy alone, in this node's own mount namespace
            sh(lab, node, "! mountpoint -q /sys/fs/cgroup/unified || umount /sys/fs/cgroup/unified")
        yield lab


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("podman") / "containers.conf"
    path.write_text(CONTAINERS_CONF)
    return path


@pytest.fixture(scope="module")
def image(lab: Lab, conf: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image in node1's storage (imported) and node2's (saved, loaded)."""
    work = tmp_path_factory.mktemp("image")
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    subprocess.run(["tar", "-C", str(root), "-cf", str(work / "rootfs.tar"), "."], check=True)
    pm = podman(conf)
    sh(lab, "node1", f"{pm} import -q --change 'CMD [\"/bin/sh\"]' {work}/rootfs.tar {IMAGE}")
    sh(lab, "node1", f"{pm} save -o {work}/image.tar {IMAGE}")
    sh(lab, "node2", f"{pm} load -q -i {work}/image.tar")
    return IMAGE


def test_a_missing_image_is_named_before_the_start(lab: Lab, conf: Path, tmp_path: Path) -> None:
    folder = templates.render(
        "podman", "nope", tmp_path, {"CONTAINERS": "app=localhost/not-here:1"}, None
    )
    env = (
        f"CONTAINERS='app=localhost/not-here:1' VOLUMES_DIR={tmp_path}/v "
        "PODMAN_ROOT=/var/lib/containers/storage PODMAN_RUNROOT=/run/containers/storage "
        f"PODMAN_TMPDIR=/run/libpod CONTAINERS_CONF={conf} "
        "PODMAN_OPTIONS='--cgroup-manager cgroupfs --events-backend file'"
    )
    r = lab.exec("node2", ["sh", "-c", f"{env} {folder}/bin/prestart"], capture=True, check=False)
    assert r.returncode != 0
    assert "localhost/not-here:1 not in this node's podman storage" in r.stdout, r.stdout
    assert "podman save IMAGE | ssh node2" in r.stdout


def test_every_acknowledged_record_survives_a_power_cut(
    lab: Lab, conf: Path, image: str, tmp_path: Path
) -> None:
    folder = templates.render(
        "podman",
        NAME,
        tmp_path,
        {
            "VIP": f"{VIP}/24",
            "CONTAINERS": f"app={image}",
            "VOLUMES_DIR": VOLUMES,
            "CONTAINERS_CONF": str(conf),
            "STOP_TIMEOUT": "3",
        },
        None,
    )
    # the container's command, per container, as the template's page says
    with (folder / "module.yaml").open("a") as f:
        f.write('  ARGS_app: "--uts host"\n  CMD_app: "/bin/sh /data/writer.sh"\n')
    pkg = tmp_path / f"{NAME}{PACKAGE_SUFFIX}"
    pkg.write_bytes(package_bytes(folder))
    module = LabModule(lab, NAME)
    # the application's files: on node1, the first primary (node2 gets them by resync)
    for node in ("node1", "node2"):
        sh(lab, node, f"mkdir -p {VOLUMES}")
    writer = tmp_path / "writer.sh"
    writer.write_text(WRITER)
    sh(lab, "node1", f"mkdir -p {VOLUMES}/app && cp {writer} {VOLUMES}/app/writer.sh")
    lab.exec("node1", ["hakit", "module", "install", str(pkg), "--all"], capture=True)
    module.loaded()
    acked_file = tmp_path / "acked"
    client = 0
    try:
        module.cmd("node1", "prim")
        try:
            module.wait("node1", "ALONE ready", 60)
        except Exception:
            raise AssertionError(f"node1 did not start:\n{module.log('node1')[-3000:]}") from None
        module.cmd("node2", "second")
        module.wait("node2", "SECOND ready", 60)
        client = lab.spawn(
            "client1",
            ["python3", "-c", CLIENT, f"http://{VIP}:{PORT}/acked", str(acked_file)],
            log=tmp_path / "client.log",
        )
        wait_until(
            lambda: acked_file.exists() and len(acked_file.read_text().split()) >= 30,
            30,
            "records acknowledged",
        )
        lab.poweroff("node1")
        before = max(int(x) for x in acked_file.read_text().split())
        try:
            module.wait("node2", "ALONE ready", 60)
        except Exception:
            tail = sh(lab, "node2", f"tail -n 20 /var/log/hakit/modules/{NAME}/scripts/*", False)
            raise AssertionError(
                f"node2 did not take over:\n{module.log('node2')[-3000:]}\n{tail}"
            ) from None
        # the container runs on node2 and goes on from the replicated records
        wait_until(
            lambda: max(int(x) for x in acked_file.read_text().split()) > before + 5,
            30,
            "records acknowledged by node2's container",
        )
        running = sh(lab, "node2", f"{podman(conf)} ps --format '{{{{.Names}}}} {{{{.Image}}}}'")
        assert f"app {image}" in running
        os.kill(client, signal.SIGTERM)
        client = 0
        acked = [int(x) for x in acked_file.read_text().split()]
        lines = sh(lab, "node2", f"cat {VOLUMES}/app/records").splitlines()
        records = dict(line.split() for line in lines if len(line.split()) == 2)
        # written by node1 before the cut, found in node2's copy (not rewritten by node2)
        missing = [n for n in range(1, before + 1) if records.get(str(n)) != "node1"]
        assert not missing, f"{len(missing)} of {before} acknowledged records lost: {missing[:20]}"
        assert {str(n) for n in acked} <= set(records)
        # node2's container went on from the replicated records
        assert records.get(str(max(acked))) == "node2"
        assert before >= 30
        # a graceful stop: podman stop, no forced call
        module.cmd("node2", "stop")
        module.wait("node2", "STOP not-ready", 60)
        fmt = "'{{.State.Status}} {{.State.ExitCode}}'"
        status = sh(lab, "node2", f"{podman(conf)} inspect -f {fmt} app")
        assert status.split() == ["exited", "0"], status
        logs = f"/var/log/hakit/modules/{NAME}/scripts/*stop_prim*"
        calls = sh(lab, "node2", f"grep -h -e '^# command:' -e '^# stop_prim exited' {logs}")
        assert calls.count("# command:") == 1, calls  # not called again with `force`
        assert "stop_prim exited 0" in calls, calls
    finally:
        if client:
            os.kill(client, signal.SIGTERM)
        lab.poweron("node1")
        sh(lab, "node1", "! mountpoint -q /sys/fs/cgroup/unified || umount /sys/fs/cgroup/unified")
        for node in ("node2", "node1"):
            lab.exec(node, ["hakit", "stop", NAME], capture=True, check=False)
            wait_until(
                lambda node=node: module.me(node) in ("STOP not-ready", "unknown"),  # type: ignore[misc]
                60,
                "stopped",
            )
        lab.exec("node1", ["hakit", "module", "uninstall", NAME, "--all"], capture=True)
        time.sleep(0.2)
