"""A farm's data path on this node: nftables tables and the virtual MAC. Thin and idempotent.

Every UP node holds the farm's VIPs (added by the VIP adapter) and sees every packet sent to
them, because clients resolve the VIPs to a *virtual MAC* that no node ever uses as a source:
switches (and Linux bridges) never learn it, so they flood those frames to every port. Three
nftables tables per module, replaced in one transaction, make that work without any kernel
module:

- `arp` family, output: ARP packets this node sends for a VIP (the kernel's replies, and its
  requests) carry the virtual MAC as the sender hardware address, so every node answers ARP
  identically and clients never flap between nodes. The Ethernet source stays the node's own.
- `netdev` family, ingress on each VIP interface: frames to the virtual MAC are marked as
  addressed to this host (the kernel would otherwise drop them as "other host"). The virtual
  MAC is also added to the interface's unicast filter (`bridge fdb … self`), which real NICs
  need to receive it without promiscuous mode.
- `inet` family, input: for packets to a VIP, established/related connections are accepted
  (connections stay where they are when buckets move); a new connection is accepted only if
  the hash of its client address (and port, per rule) falls in a bucket this node owns, and a
  TCP packet that is neither a SYN nor part of a known connection is dropped, so no node ever
  resets another node's connections. ICMP is hashed on the client address (one echo reply).

The owned buckets are a verdict map (bucket → accept), replaced atomically on each change.
nft 1.0.6 cannot look a hash up in a map directly without crashing `nft list ruleset` (a map
`typeof jhash …` loads but segfaults the listing), so the hash goes through the packet mark:
the first packet of each new connection to a VIP carries its bucket number as its mark.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

from hakit.errors import HakitError

NFT_TIMEOUT = 10.0
BUCKETS = 256


class FarmPathError(HakitError):
    """The farm's packet filter could not be installed, changed, read or removed."""


@dataclass(frozen=True)
class Rule:
    protocol: str  # tcp | udp
    port: int | None
    by: str  # client-ip | client-ip-port


@dataclass(frozen=True)
class FarmPath:
    """What one farm module needs on this node's data path."""

    module: str
    vips: tuple[str, ...]  # IPv4 addresses
    interfaces: tuple[str, ...]  # where the VIPs are
    mac: str  # virtual MAC, "02:48:0a:64:01:c8"
    rules: tuple[Rule, ...]
    seed: int = field(default=0)

    @property
    def table(self) -> str:
        return table_name(self.module)


def table_name(module: str) -> str:
    safe = module.replace("-", "_")
    if safe != module:
        safe += "_" + hashlib.blake2b(module.encode(), digest_size=2).hexdigest()
    return f"hakit_farm_{safe}"


def seed_of(module: str) -> int:
    return int.from_bytes(hashlib.blake2b(module.encode(), digest_size=4).digest(), "big")


def _hash(rule_by: str, proto: str, seed: int) -> str:
    key = "ip saddr" if rule_by == "client-ip" else f"ip saddr . {proto} sport"
    return f"jhash {key} mod {BUCKETS} seed 0x{seed:08x}"


def ruleset(fp: FarmPath) -> str:
    """The three tables, replacing any previous version, in one nft script (no buckets)."""
    t = fp.table
    vips = ", ".join(fp.vips)
    lines = [f"add table inet {t}", f"delete table inet {t}"]
    lines += [f"add table arp {t}", f"delete table arp {t}"]
    lines += [f"add table netdev {t}", f"delete table netdev {t}"]
    lines.append(f"table inet {t} {{")
    lines.append("\tmap owner { type mark : verdict; }")
    lines.append("\tchain input {")
    lines.append("\t\ttype filter hook input priority -10; policy accept;")
    lines.append(f"\t\tip daddr {{ {vips} }} jump farm")
    lines.append("\t}")
    lines.append("\tchain farm {")
    lines.append("\t\tct state established,related accept")
    lines.append("\t\tmeta l4proto tcp tcp flags & (syn | ack) != syn drop")
    for r in fp.rules:
        port = f" {r.protocol} dport {r.port}" if r.port is not None else ""
        lines.append(
            f"\t\tmeta l4proto {r.protocol}{port} meta mark set "
            f"{_hash(r.by, r.protocol, fp.seed)} meta mark vmap @owner"
        )
    lines.append(
        f"\t\tmeta l4proto icmp meta mark set {_hash('client-ip', 'icmp', fp.seed)} "
        "meta mark vmap @owner"
    )
    lines.append("\t\tdrop")
    lines.append("\t}")
    lines.append("}")
    lines.append(f"table arp {t} {{")
    lines.append("\tchain output {")
    lines.append("\t\ttype filter hook output priority 0; policy accept;")
    lines.append(f"\t\tarp saddr ip {{ {vips} }} arp saddr ether set {fp.mac}")
    lines.append("\t}")
    lines.append("}")
    lines.append(f"table netdev {t} {{")
    for i, ifname in enumerate(fp.interfaces):
        lines.append(f"\tchain ingress{i} {{")
        lines.append(f'\t\ttype filter hook ingress device "{ifname}" priority -500;')
        lines.append("\t\tpolicy accept;")
        lines.append(f"\t\tether daddr {fp.mac} meta pkttype set host")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def buckets_script(table: str, owned: int) -> str:
    lines = [f"flush map inet {table} owner"]
    elems = [f"{b} : accept" for b in range(BUCKETS) if owned >> b & 1]
    if elems:
        lines.append(f"add element inet {table} owner {{ {', '.join(elems)} }}")
    return "\n".join(lines) + "\n"


def removal_script(table: str) -> str:
    families = ("inet", "arp", "netdev")
    return "".join(f"add table {f} {table}\ndelete table {f} {table}\n" for f in families)


class FarmPathPort(Protocol):
    def install(self, fp: FarmPath) -> None:
        """Put the tables in place (owning no bucket) and the MAC in the unicast filters."""
        ...

    def set_buckets(self, fp: FarmPath, owned: int) -> None:
        """Accept new connections exactly for the buckets in `owned` (a bitmap)."""
        ...

    def owned(self, module: str) -> int | None:
        """The buckets accepted now, as read back from the kernel; None: not installed."""
        ...

    def remove(self, fp: FarmPath) -> bool:
        """Remove the tables and the MAC from the filters; False if nothing was there."""
        ...


def _nft(script: str, what: str) -> str:
    try:
        r = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT
        )
    except FileNotFoundError as e:
        raise FarmPathError(f"{what}: nft not found (install the nftables package)") from e
    except subprocess.TimeoutExpired as e:
        raise FarmPathError(f"{what}: nft did not answer within {NFT_TIMEOUT:g} s") from e
    if r.returncode != 0:
        raise FarmPathError(f"{what}: nft failed: {r.stderr.strip()[:500]}")
    return r.stdout


def _bridge_fdb(verb: str, mac: str, ifname: str) -> tuple[bool, str]:
    try:
        r = subprocess.run(
            ["bridge", "fdb", verb, mac, "dev", ifname, "self", "permanent"],
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, r.stderr.strip()


class NftFarmPath:
    """The real `FarmPathPort`: `nft -f` transactions and `bridge fdb`."""

    def install(self, fp: FarmPath) -> None:
        _nft(ruleset(fp), f"farm {fp.module}: installing the packet filter")
        for ifname in fp.interfaces:
            ok, err = _bridge_fdb("replace", fp.mac, ifname)
            if not ok:
                raise FarmPathError(
                    f"farm {fp.module}: cannot add the virtual MAC {fp.mac} to {ifname}'s "
                    f"unicast filter: {err}"
                )

    def set_buckets(self, fp: FarmPath, owned: int) -> None:
        _nft(buckets_script(fp.table, owned), f"farm {fp.module}: changing the buckets")

    def owned(self, module: str) -> int | None:
        try:
            r = subprocess.run(
                ["nft", "-j", "list", "map", "inet", table_name(module), "owner"],
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None  # unreadable counts as absent: the caller installs it again
        if r.returncode != 0:
            return None  # no such table
        return parse_owned(r.stdout)

    def remove(self, fp: FarmPath) -> bool:
        present = self.owned(fp.module) is not None
        _nft(removal_script(fp.table), f"farm {fp.module}: removing the packet filter")
        for ifname in fp.interfaces:
            _bridge_fdb("del", fp.mac, ifname)  # absent (or interface gone): nothing to undo
        return present


def parse_owned(listing: str) -> int:
    """The owned bitmap from `nft -j list map` (elements `[N, {"accept": null}]`)."""
    out = 0
    for item in json.loads(listing).get("nftables", []):
        for key, verdict in (item.get("map") or {}).get("elem", []):
            if isinstance(key, int) and 0 <= key < BUCKETS and "accept" in verdict:
                out |= 1 << key
    return out
