"""The GCP VIP mover (`MoverPort`): the Compute Engine REST API (v1) over httpx.

`alias-ip` mode: the VIP is an alias IP range (`VIP/32`) of the primary instance's network
interface; a takeover first removes it from the other module node's interface (an address is
an alias of one interface at a time), then adds it here, each by
`instances.updateNetworkInterface` with the interface's current `fingerprint` (nobody else's
change is overwritten), followed until the zone operation is `DONE`. `route` mode: a route
`hakit-VIP` (`VIP/32`, next hop the primary's instance) in the VPC network; routes cannot be
changed, so a takeover deletes the other node's route and inserts this node's.

Credentials: google-auth's Application Default Credentials (the instance's service account via
the metadata server, `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login; `pip install
'hakit[gcp]'`), scope `compute`. Every operation is bounded by `timeout`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hakit.adapters.bounded import run_bounded
from hakit.adapters.movers import missing_extra
from hakit.adapters.rest import NotFound, Rest
from hakit.adapters.vip import Vip, VipError
from hakit.config.cloud import GcpMover, object_name

SCOPE = "https://www.googleapis.com/auth/compute"
T = TypeVar("T")


def default_token() -> Callable[[], str]:
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError as e:
        raise missing_extra("GCP", "google-auth") from e
    state: dict[str, Any] = {}

    def token() -> str:
        creds = state.get("creds")
        if creds is None:
            creds, _ = google.auth.default(scopes=[SCOPE])
            state["creds"] = creds
        if not creds.valid:
            creds.refresh(google.auth.transport.requests.Request())
        return str(creds.token)

    return token


class GcpVips:
    def __init__(self, cfg: GcpMover, node: str, token: Callable[[], str] | None = None) -> None:
        self.cfg = cfg
        self.node = node
        self.spec = cfg.nodes[node]
        self._ids = {self._id(n): n for n in cfg.nodes}
        self.rest = Rest("GCP", token or default_token(), cfg.timeout)

    def _id(self, node: str) -> str:
        s = self.cfg.nodes[node]
        return f"zones/{s.zone}/instances/{s.instance}"

    @property
    def mine(self) -> str:
        return self._id(self.node)

    def node_of(self, holder: str) -> str | None:
        return self._ids.get(holder)

    def _bounded(self, what: str, fn: Callable[[], T]) -> T:
        def late() -> VipError:
            return VipError(
                f"GCP: {what}: Compute Engine did not answer within {self.cfg.timeout:g} s; "
                "the VIP is left as it was"
            )

        return run_bounded(fn, self.cfg.timeout, late, "hakit-gcp")

    def _project(self) -> str:
        return f"{self.cfg.endpoint}/projects/{self.cfg.project}"

    # -- operations ---------------------------------------------------------------------------

    def _wait(self, op: Any, scope: str, what: str) -> None:
        """Follow an operation (`scope`: `zones/Z` or `global`) until DONE; its error if any."""
        for _ in range(10_000):
            if not isinstance(op, dict) or "name" not in op:
                raise VipError(f"GCP: {what}: no operation in the answer")
            if op.get("status") == "DONE":
                errors = (op.get("error") or {}).get("errors") or []
                if errors:
                    e = errors[0]
                    raise VipError(f"GCP: {what}: {e.get('code', 'error')}: {e.get('message', '')}")
                return
            url = f"{self._project()}/{scope}/operations/{op['name']}/wait"
            op, _ = self.rest.call(what + " (waiting for the operation)", "POST", url)
        raise VipError(f"GCP: {what}: the operation never ended")

    # -- alias IP ranges ------------------------------------------------------------------------

    def _interface(self, node: str) -> dict[str, Any]:
        s = self.cfg.nodes[node]
        url = f"{self._project()}/zones/{s.zone}/instances/{s.instance}"
        data, _ = self.rest.call(f"reading instance {s.instance}", "GET", url)
        for nic in (data or {}).get("networkInterfaces") or []:
            if nic.get("name") == s.interface:
                return dict(nic)
        raise VipError(f"GCP: instance {s.instance} has no network interface {s.interface}")

    @staticmethod
    def _has(nic: dict[str, Any], ip: str) -> bool:
        return any(r.get("ipCidrRange") in (ip, f"{ip}/32") for r in nic.get("aliasIpRanges") or [])

    def _set_aliases(
        self, node: str, nic: dict[str, Any], ranges: list[dict[str, Any]], what: str
    ) -> None:
        s = self.cfg.nodes[node]
        url = f"{self._project()}/zones/{s.zone}/instances/{s.instance}/updateNetworkInterface"
        body = {"aliasIpRanges": ranges, "fingerprint": nic.get("fingerprint")}
        op, _ = self.rest.call(
            what, "PATCH", url, params={"networkInterface": s.interface}, body=body
        )
        self._wait(op, f"zones/{s.zone}", what)

    def _without(self, nic: dict[str, Any], ip: str) -> list[dict[str, Any]]:
        return [
            r
            for r in nic.get("aliasIpRanges") or []
            if r.get("ipCidrRange") not in (ip, f"{ip}/32")
        ]

    # -- routes -------------------------------------------------------------------------------

    def _route(self, vip: Vip) -> dict[str, Any] | None:
        url = f"{self._project()}/global/routes/{object_name(vip.ip)}"
        try:
            data, _ = self.rest.call(f"reading route {object_name(vip.ip)}", "GET", url)
        except NotFound:
            return None
        return dict(data or {})

    def _hop(self, route: dict[str, Any]) -> str:
        hop = str(route.get("nextHopInstance") or route.get("nextHopIp") or "another next hop")
        return hop[hop.index("zones/") :] if "zones/" in hop else hop

    def _delete_route(self, vip: Vip, what: str) -> None:
        url = f"{self._project()}/global/routes/{object_name(vip.ip)}"
        op, _ = self.rest.call(what, "DELETE", url)
        self._wait(op, "global", what)

    # -- MoverPort ------------------------------------------------------------------------------

    def holder(self, vip: Vip) -> str | None:
        def work() -> str | None:
            if self.cfg.mode == "route":
                route = self._route(vip)
                return None if route is None else self._hop(route)
            found = [
                self._id(n) for n in self.cfg.nodes if self._has(self._interface(n), vip.address)
            ]
            return self.mine if self.mine in found else (found[0] if found else None)

        return self._bounded(f"finding who holds {vip.address}", work)

    def acquire(self, vip: Vip) -> bool:
        ip = vip.address

        def work() -> bool:
            if self.cfg.mode == "route":
                return self._acquire_route(vip)
            mine = self._interface(self.node)
            if self._has(mine, ip):
                return False
            for other in self.cfg.nodes:
                if other == self.node:
                    continue
                nic = self._interface(other)
                if self._has(nic, ip):
                    what = f"removing {ip} from {self.cfg.nodes[other].instance}"
                    self._set_aliases(other, nic, self._without(nic, ip), what)
            mine = self._interface(self.node)  # a fresh fingerprint
            ranges = [*(mine.get("aliasIpRanges") or []), {"ipCidrRange": f"{ip}/32"}]
            self._set_aliases(self.node, mine, ranges, f"adding {ip} to {self.spec.instance}")
            return True

        return self._bounded(f"moving {ip} to {self.node} ({self.spec.instance})", work)

    def _acquire_route(self, vip: Vip) -> bool:
        route = self._route(vip)
        if route is not None and self._hop(route) == self.mine:
            return False
        if route is not None:
            self._delete_route(vip, f"deleting route {object_name(vip.ip)} of another node")
        body = {
            "name": object_name(vip.ip),
            "network": f"projects/{self.cfg.project}/global/networks/{self.cfg.network}",
            "destRange": f"{vip.address}/32",
            "nextHopInstance": f"projects/{self.cfg.project}/{self.mine}",
            "priority": 1000,
            "description": f"hakit VIP {vip.address} on {self.node}",
        }
        what = f"inserting route {object_name(vip.ip)} to {self.spec.instance}"
        op, _ = self.rest.call(what, "POST", f"{self._project()}/global/routes", body=body)
        self._wait(op, "global", what)
        return True

    def release(self, vip: Vip) -> bool:
        ip = vip.address

        def work() -> bool:
            if self.cfg.mode == "route":
                route = self._route(vip)
                if route is None or self._hop(route) != self.mine:
                    return False
                self._delete_route(vip, f"deleting route {object_name(vip.ip)}")
                return True
            nic = self._interface(self.node)
            if not self._has(nic, ip):
                return False
            what = f"removing {ip} from {self.spec.instance}"
            self._set_aliases(self.node, nic, self._without(nic, ip), what)
            return True

        return self._bounded(f"releasing {ip} from {self.node} ({self.spec.instance})", work)
