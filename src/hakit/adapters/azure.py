"""The Azure VIP mover (`MoverPort`): Azure Resource Manager's Network REST API over httpx.

A VIP is an ip-configuration named `hakit-VIP` (a static private IP in the subnet of the NIC's
primary ip-configuration) of the primary's NIC. Azure gives an address to one NIC only, so a
takeover first removes it from the other module node's NIC (a NIC can be changed while its VM
is off or dead), then adds it here. Each change is `PUT` of the whole NIC with `If-Match` on its
etag (nobody else's change is overwritten) and is followed through its
`Azure-AsyncOperation` until `Succeeded`.

Credentials: azure-identity's `DefaultAzureCredential` (environment service principal, workload
identity, managed identity, Azure CLI login; `pip install 'hakit[azure]'`), asked for a token of
the endpoint's `/.default` scope. Every operation is bounded by `timeout` (each request by httpx,
the whole by a worker thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hakit.adapters.bounded import run_bounded
from hakit.adapters.movers import missing_extra
from hakit.adapters.rest import Rest, poll
from hakit.adapters.vip import Vip, VipError
from hakit.config.cloud import AzureMover, object_name

API_VERSION = "2023-09-01"
T = TypeVar("T")


def default_token(scope: str) -> Callable[[], str]:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as e:
        raise missing_extra("Azure", "azure-identity") from e
    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    return lambda: str(credential.get_token(scope).token)


class AzureVips:
    def __init__(self, cfg: AzureMover, node: str, token: Callable[[], str] | None = None) -> None:
        self.cfg = cfg
        self.node = node
        self.nic = cfg.nodes[node].nic
        self._nics = {spec.nic: name for name, spec in cfg.nodes.items()}
        self.rest = Rest("Azure", token or default_token(cfg.endpoint + "/.default"), cfg.timeout)

    @property
    def mine(self) -> str:
        return self.nic

    def node_of(self, holder: str) -> str | None:
        return self._nics.get(holder)

    def _url(self, nic: str) -> str:
        c = self.cfg
        return (
            f"{c.endpoint}/subscriptions/{c.subscription}/resourceGroups/{c.resource_group}"
            f"/providers/Microsoft.Network/networkInterfaces/{nic}"
        )

    def _bounded(self, what: str, fn: Callable[[], T]) -> T:
        def late() -> VipError:
            return VipError(
                f"Azure: {what}: Azure Resource Manager did not answer within "
                f"{self.cfg.timeout:g} s; the VIP is left as it was"
            )

        return run_bounded(fn, self.cfg.timeout, late, "hakit-azure")

    def _get(self, nic: str) -> dict[str, Any]:
        data, _ = self.rest.call(
            f"reading NIC {nic}", "GET", self._url(nic), params={"api-version": API_VERSION}
        )
        if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
            raise VipError(f"Azure: reading NIC {nic}: not a network interface in the answer")
        return data

    @staticmethod
    def _configs(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return list(doc["properties"].get("ipConfigurations") or [])

    def _holds(self, doc: dict[str, Any], ip: str) -> bool:
        return any(
            (c.get("properties") or {}).get("privateIPAddress") == ip for c in self._configs(doc)
        )

    def _put(self, nic: str, doc: dict[str, Any], configs: list[dict[str, Any]], what: str) -> None:
        body = {
            "location": doc.get("location"),
            "tags": doc.get("tags") or {},
            "properties": {**doc["properties"], "ipConfigurations": configs},
        }
        headers = {"If-Match": doc["etag"]} if doc.get("etag") else {}
        _, h = self.rest.call(
            what,
            "PUT",
            self._url(nic),
            params={"api-version": API_VERSION},
            body=body,
            headers=headers,
        )
        follow = h.get("Azure-AsyncOperation")
        if follow:
            poll(what, lambda: self._done(follow, what))

    def _done(self, url: str, what: str) -> bool:
        data, _ = self.rest.call(what + " (following the operation)", "GET", url)
        status = str((data or {}).get("status", ""))
        if status in ("Failed", "Canceled"):
            err = (data or {}).get("error") or {}
            raise VipError(
                f"Azure: {what}: the operation {status.lower()}: "
                f"{err.get('code', 'error')}: {err.get('message', '')}"
            )
        return status == "Succeeded"

    def holder(self, vip: Vip) -> str | None:
        def work() -> str | None:
            found = [nic for nic in self._nics if self._holds(self._get(nic), vip.address)]
            return self.nic if self.nic in found else (found[0] if found else None)

        return self._bounded(f"finding who holds {vip.address}", work)

    def acquire(self, vip: Vip) -> bool:
        ip, name = vip.address, object_name(vip.ip)

        def work() -> bool:
            mine = self._get(self.nic)
            if self._holds(mine, ip):
                return False
            for nic in self._nics:
                if nic == self.nic:
                    continue
                doc = self._get(nic)
                if self._holds(doc, ip):
                    keep = [
                        c
                        for c in self._configs(doc)
                        if (c.get("properties") or {}).get("privateIPAddress") != ip
                    ]
                    self._put(nic, doc, keep, f"removing {ip} from NIC {nic}")
            mine = self._get(self.nic)  # a fresh etag
            primary = next(
                (c for c in self._configs(mine) if (c.get("properties") or {}).get("primary")),
                None,
            )
            subnet = ((primary or {}).get("properties") or {}).get("subnet")
            if not subnet:
                raise VipError(f"Azure: NIC {self.nic} has no primary ip-configuration subnet")
            config = {
                "name": name,
                "properties": {
                    "privateIPAddress": ip,
                    "privateIPAllocationMethod": "Static",
                    "privateIPAddressVersion": "IPv4",
                    "primary": False,
                    "subnet": {"id": subnet["id"]},
                },
            }
            what = f"adding {ip} to NIC {self.nic} of {self.node}"
            self._put(self.nic, mine, [*self._configs(mine), config], what)
            return True

        return self._bounded(f"moving {ip} to {self.node} (NIC {self.nic})", work)

    def release(self, vip: Vip) -> bool:
        ip = vip.address

        def work() -> bool:
            doc = self._get(self.nic)
            if not self._holds(doc, ip):
                return False
            keep = [
                c
                for c in self._configs(doc)
                if (c.get("properties") or {}).get("privateIPAddress") != ip
            ]
            self._put(self.nic, doc, keep, f"removing {ip} from NIC {self.nic}")
            return True

        return self._bounded(f"releasing {ip} from {self.node} (NIC {self.nic})", work)
