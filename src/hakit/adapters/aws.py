"""The AWS VIP mover (`MoverPort`): EC2's API through boto3 (`pip install 'hakit[aws]'`).

Two ways, alone or together (`vips[].mover`): the VIP as a **secondary private IP** of the node's
network interface (`AssignPrivateIpAddresses` with `AllowReassignment`, so AWS takes it from
whichever interface had it), and the VIP's **route** (`VIP/32`) in route tables pointed at the
node's interface (`CreateRoute` / `ReplaceRoute`). A takeover also unassigns the VIP from the
other module node's interface first: AWS's reassignment does that by itself, an emulator may
not (moto does not), and the address must never stay on two interfaces.

Credentials: boto3's default chain only (environment, shared config and credentials files, SSO,
the instance profile through the instance metadata service). Every operation is bounded:
botocore's connect and read timeouts and at most two attempts per call, and the whole operation
by `timeout` on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hakit.adapters.bounded import run_bounded
from hakit.adapters.movers import missing_extra
from hakit.adapters.vip import Vip, VipError
from hakit.config.cloud import AwsMover

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAVE_BOTO3 = True
except ImportError:  # hakit[aws] not installed
    HAVE_BOTO3 = False

T = TypeVar("T")


class AwsVips:
    """`MoverPort` for one node in an AWS VPC."""

    def __init__(self, cfg: AwsMover, node: str) -> None:
        if not HAVE_BOTO3:
            raise missing_extra("AWS", "boto3")
        self.cfg = cfg
        self.node = node
        self.eni = cfg.nodes[node].eni
        self._enis = {spec.eni: name for name, spec in cfg.nodes.items()}
        self._client: Any = None

    @property
    def mine(self) -> str:
        return self.eni

    def node_of(self, holder: str) -> str | None:
        return self._enis.get(holder)

    # -- the calls ------------------------------------------------------------------------------

    def _ec2(self) -> Any:
        if self._client is None:
            t = self.cfg.timeout
            config = botocore.config.Config(
                connect_timeout=min(3.0, t),
                read_timeout=t,
                retries={"max_attempts": 2, "mode": "standard"},
            )
            session = boto3.session.Session()
            self._client = session.client(
                "ec2", region_name=self.cfg.region, endpoint_url=self.cfg.endpoint, config=config
            )
        return self._client

    def _bounded(self, what: str, fn: Callable[[], T]) -> T:
        def late() -> VipError:
            return VipError(
                f"AWS: {what}: EC2 did not answer within {self.cfg.timeout:g} s "
                f"({self.cfg.endpoint or self.cfg.region}); the VIP is left as it was"
            )

        try:
            return run_bounded(fn, self.cfg.timeout, late, "hakit-aws")
        except VipError:
            raise
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            raise VipError(
                f"AWS: {what}: {err.get('Code', 'error')}: {err.get('Message', e)}"
                + _hint(str(err.get("Code", "")))
            ) from e
        except botocore.exceptions.NoCredentialsError as e:
            raise VipError(
                f"AWS: {what}: no credentials found (boto3's chain: AWS_ACCESS_KEY_ID / "
                "AWS_PROFILE, ~/.aws/credentials, the instance profile); give the instance a "
                "role that may assign private IPs and change routes"
            ) from e
        except botocore.exceptions.BotoCoreError as e:
            raise VipError(f"AWS: {what}: {e}") from e

    def _interfaces(self) -> list[dict[str, Any]]:
        """The module nodes' interfaces as EC2 describes them."""
        ids = sorted(self._enis)
        out = self._ec2().describe_network_interfaces(NetworkInterfaceIds=ids)
        return list(out.get("NetworkInterfaces", []))

    def _ip_holders(self, ip: str) -> list[str]:
        held = [
            i["NetworkInterfaceId"]
            for i in self._interfaces()
            if any(a.get("PrivateIpAddress") == ip for a in i.get("PrivateIpAddresses", []))
        ]
        if held:
            return held
        found = self._ec2().describe_network_interfaces(
            Filters=[{"Name": "addresses.private-ip-address", "Values": [ip]}]
        )
        return [i["NetworkInterfaceId"] for i in found.get("NetworkInterfaces", [])]

    def _route_target(self, table: str, cidr: str) -> str | None:
        """The interface (or another target's id) the route to `cidr` points at, None if none."""
        out = self._ec2().describe_route_tables(RouteTableIds=[table])
        for t in out.get("RouteTables", []):
            for r in t.get("Routes", []):
                if r.get("DestinationCidrBlock") == cidr:
                    return str(
                        r.get("NetworkInterfaceId")
                        or r.get("InstanceId")
                        or r.get("GatewayId")
                        or "another target"
                    )
        return None

    def holder(self, vip: Vip) -> str | None:
        ip, cidr = vip.address, f"{vip.address}/32"

        def work() -> str | None:
            if self.cfg.secondary_ip:
                holders = self._ip_holders(ip)
                return self.eni if self.eni in holders else (holders[0] if holders else None)
            return self._route_target(self.cfg.route_tables[0], cidr)

        return self._bounded(f"finding who holds {ip}", work)

    def acquire(self, vip: Vip) -> bool:
        ip, cidr = vip.address, f"{vip.address}/32"

        def work() -> bool:
            moved = False
            ec2 = self._ec2()
            if self.cfg.secondary_ip:
                holders = self._ip_holders(ip)
                for other in holders:
                    if other != self.eni and other in self._enis:
                        ec2.unassign_private_ip_addresses(
                            NetworkInterfaceId=other, PrivateIpAddresses=[ip]
                        )
                if self.eni not in holders:
                    ec2.assign_private_ip_addresses(
                        NetworkInterfaceId=self.eni, PrivateIpAddresses=[ip], AllowReassignment=True
                    )
                    moved = True
            for table in self.cfg.route_tables:
                target = self._route_target(table, cidr)
                if target == self.eni:
                    continue
                call = ec2.create_route if target is None else ec2.replace_route
                call(RouteTableId=table, DestinationCidrBlock=cidr, NetworkInterfaceId=self.eni)
                moved = True
            return moved

        return self._bounded(f"moving {ip} to {self.node} ({self.eni})", work)

    def release(self, vip: Vip) -> bool:
        ip, cidr = vip.address, f"{vip.address}/32"

        def work() -> bool:
            released = False
            ec2 = self._ec2()
            if self.cfg.secondary_ip and self.eni in self._ip_holders(ip):
                ec2.unassign_private_ip_addresses(
                    NetworkInterfaceId=self.eni, PrivateIpAddresses=[ip]
                )
                released = True
            for table in self.cfg.route_tables:
                if self._route_target(table, cidr) == self.eni:  # never another node's route
                    ec2.delete_route(RouteTableId=table, DestinationCidrBlock=cidr)
                    released = True
            return released

        return self._bounded(f"releasing {ip} from {self.node} ({self.eni})", work)


def _hint(code: str) -> str:
    if code in ("UnauthorizedOperation", "AuthFailure"):
        return (
            "; the instance's role needs ec2:AssignPrivateIpAddresses, "
            "ec2:UnassignPrivateIpAddresses, ec2:DescribeNetworkInterfaces (and for routes "
            "ec2:DescribeRouteTables, ec2:CreateRoute, ec2:ReplaceRoute, ec2:DeleteRoute)"
        )
    return ""
