"""Prepare a lab host's fresh mount + UTS namespaces (run by `unshare`, inside the host's netns).

    python -m hakit.lab.nodesetup '{"hostname": ..., "drop": [...], "scratch": ..., "binds": [...]}'

1. Set the hostname (the daemon finds its node name there).
2. Unmount this namespace's copies of other namespaces' files (`/run/netns`, `/run/hakit-lab`),
   so the host never keeps another lab's namespaces alive.
3. Mount a sysfs of the host's own network namespace on /sys (as `ip netns exec` does), so
   /sys/class/net shows eth0, eth1... of the host, keeping /sys submounts (cgroup, fuse, ...).
4. Bind each per-host directory (or file) on its path: /etc/hakit, /var/lib/hakit, ...

Every mount here is private to the namespace (created with `--propagation private`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from hakit.lab.namespaces import mountinfo


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise SystemExit(f"mount {' '.join(args)}: {proc.stderr.strip()}")


def _umount_tree(path: str) -> None:
    for m in reversed(mountinfo()):
        if m.mountpoint == path or m.mountpoint.startswith(path.rstrip("/") + "/"):
            subprocess.run(["umount", "--lazy", m.mountpoint], capture_output=True, timeout=10)


def _remount_sys(scratch: str) -> None:
    mounts = mountinfo()
    sys_mounts = [m for m in mounts if m.mountpoint == "/sys"]
    if not sys_mounts:
        _mount("-t", "sysfs", "-o", "nosuid,nodev,noexec", "sysfs", "/sys")
        return
    top = sys_mounts[-1]
    children = [m.mountpoint for m in mounts if m.parent_id == top.mount_id]
    _mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "hakit-lab-scratch", scratch)
    moved: list[tuple[str, str]] = []
    for n, mp in enumerate(children):
        spot = os.path.join(scratch, str(n))
        os.mkdir(spot)
        _mount("--move", mp, spot)
        moved.append((spot, mp))
    subprocess.run(["umount", "--lazy", "/sys"], check=True, capture_output=True, timeout=10)
    _mount("-t", "sysfs", "-o", "nosuid,nodev,noexec", "sysfs", "/sys")
    for spot, mp in moved:
        if os.path.isdir(mp):
            _mount("--move", spot, mp)
        else:  # not present in this sysfs: drop it rather than fail
            subprocess.run(["umount", "-l", "-R", spot], capture_output=True, timeout=10)
    subprocess.run(["umount", "--lazy", scratch], check=True, capture_output=True, timeout=10)


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    socket.sethostname(str(cfg["hostname"]))
    for path in cfg["drop"]:
        _umount_tree(str(path))
    _remount_sys(str(cfg["scratch"]))
    for src, dst in cfg["binds"]:
        _mount("--bind", str(src), str(dst))


if __name__ == "__main__":
    main(sys.argv)
