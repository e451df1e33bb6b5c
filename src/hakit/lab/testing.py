"""Helpers for tests that run in a lab (no pytest import: usable from any test or script)."""

from __future__ import annotations

import os
import secrets
import shutil

from hakit.lab.lab import Lab
from hakit.waiting import wait_until

__all__ = ["can_ping", "unavailable_reason", "unique_name", "wait_until"]


def unavailable_reason() -> str | None:
    """Why lab tests cannot run here (for `pytest.mark.skipif`), or None if they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network and mount namespaces)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"lab tests need `{tool}` (apt-get install {pkg})"
    if shutil.which("ping") is None:
        return "lab tests need `ping` (apt-get install iputils-ping)"
    return None


def unique_name(prefix: str = "tl") -> str:
    """A fresh lab name, e.g. `tl-3fa9c1` (tests use the `tl` prefix)."""
    return f"{prefix}-{secrets.token_hex(3)}"


def can_ping(lab: Lab, src: str, dst: str, network: int | str = 1, wait: float = 1.0) -> bool:
    """Whether `src` gets an answer from `dst`'s address on `network` (one ICMP echo, at most
    `wait` s; the address is inside the lab, so no packet can leave it)."""
    address = lab.address(dst, network)
    cmd = ["ping", "-c", "1", "-W", f"{wait:g}", "-n", "-q", address]
    return lab.exec(src, cmd, check=False, capture=True).returncode == 0
