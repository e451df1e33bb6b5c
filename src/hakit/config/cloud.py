"""Clouds: a module's health-probe endpoint and the movers of VIPs on networks without layer 2.

`health_probe` (mirror and farm modules) opens a plain-HTTP endpoint for cloud load balancers
and monitors (`src/hakit/probe/`, docs/cloud.md). `vips[].mover` (mirror modules) moves a VIP by
a cloud API call instead of only adding it to an interface: AWS (secondary private IP of the
node's network interface and/or route-table entries), Azure (an ip-configuration of the node's
NIC) or GCP (an alias IP range of the node's instance, or a route). Credentials never appear
here: each cloud's standard sources are used (docs/cloud.md, "Credentials").

The checks that relate these blocks to the module and the cluster are `check_cloud`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, IPvAnyAddress, StringConstraints

from hakit.config.model import Cluster, Frozen, Name
from hakit.config.rules import Problem

if TYPE_CHECKING:
    from hakit.config.module import ModuleConfig


def _endpoint(value: str) -> str:
    """An API endpoint: https, or http to a loopback address only (local emulators, tests):
    a bearer token or a signed request must never travel in clear over a network."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL, e.g. `https://ec2.eu-west-1.amazonaws.com`")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("a URL without query, fragment or credentials")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise ValueError("`https://` (plain `http://` only to a loopback address)")
    return value.rstrip("/")


Endpoint = Annotated[str, StringConstraints(max_length=256), AfterValidator(_endpoint)]
PROBE_PATH = r"^/[A-Za-z0-9._~/-]{0,63}$"


class HealthProbe(Frozen):
    """A plain-HTTP endpoint for cloud load balancers and external monitors: `GET PATH`
    answers 200 while this node serves the module (a mirror's PRIM or ALONE, a farm's UP, each
    ready) and 503 otherwise, with a short JSON body (module, node, state, status).
    Unauthenticated and read-only by design (docs/security.md, "Health probe")."""

    port: int = Field(
        ge=1,
        le=65535,
        description="TCP port of the endpoint (one per module on a node), e.g. `9010`.",
    )
    bind: tuple[IPvAnyAddress, ...] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description=(
            "Addresses to listen on (default, without `network` either: `0.0.0.0`, every "
            "IPv4 address — a GCP internal load balancer's probes are addressed to its "
            "forwarding rule's IP). `::` listens on IPv6 only; give `0.0.0.0` and `::` for both."
        ),
    )
    network: Name | None = Field(
        None,
        description=(
            "Listen only on this node's address on that cluster network (instead of `bind`)."
        ),
    )
    path: str = Field(
        "/health",
        pattern=PROBE_PATH,
        description="The one path answered; any other is 404.",
    )

    def addresses(self, node_addresses: Mapping[str, IPvAnyAddress]) -> tuple[str, ...]:
        """Where a node whose addresses (network -> address) are `node_addresses` listens."""
        if self.network is not None:
            own = node_addresses.get(self.network)
            return (str(own),) if own is not None else ()
        return tuple(str(a) for a in self.bind or (ipaddress.IPv4Address("0.0.0.0"),))


AwsRegion = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")]
AwsEni = Annotated[str, StringConstraints(pattern=r"^eni-[0-9a-f]{8,17}$")]
AwsRouteTable = Annotated[str, StringConstraints(pattern=r"^rtb-[0-9a-f]{8,17}$")]
AzureName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.()-]{0,89}$")]
GcpName = Annotated[str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")]
GcpProject = Annotated[str, StringConstraints(pattern=r"^[a-z][-a-z0-9.:]{4,62}[a-z0-9]$")]
GcpZone = Annotated[str, StringConstraints(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]
TIMEOUT_DESCRIPTION = (
    "Seconds one mover operation (every API call it makes, token included) may take before "
    "it is abandoned with an error in the module's timeline; it never blocks the daemon."
)


class AwsNode(Frozen):
    """This node's place in the VPC."""

    eni: AwsEni = Field(
        description="The node's network interface (`eni-…`) that receives the VIP.",
    )


class AwsMover(Frozen):
    """Move the VIP in an AWS VPC: assign it as a secondary private IP of the primary's network
    interface (`AllowReassignment`: taken from the other node's interface at once), and/or point
    the VIP's route (`VIP/32`) in route tables at that interface (VIPs outside the VPC's
    subnets, across availability zones; the instances need source/destination check off).
    Credentials: boto3's default chain (environment, shared files, instance profile); needs
    `pip install 'hakit[aws]'`."""

    cloud: Literal["aws"] = Field(description="`aws`.")
    region: AwsRegion = Field(description="The VPC's region, e.g. `eu-west-1`.")
    secondary_ip: bool = Field(
        True,
        description=(
            "Assign the VIP as a secondary private IP of the node's interface (the VIP must "
            "be in that interface's subnet)."
        ),
    )
    route_tables: tuple[AwsRouteTable, ...] = Field(
        (),
        max_length=16,
        description="Route tables whose route to `VIP/32` is pointed at the node's interface.",
    )
    nodes: dict[Name, AwsNode] = Field(description="Each module node's interface.")
    endpoint: Endpoint | None = Field(
        None,
        description=(
            "EC2 endpoint (default: the region's public one; a VPC endpoint's URL to keep the "
            "calls inside the VPC)."
        ),
    )
    timeout: float = Field(10.0, ge=0.5, le=120, description=TIMEOUT_DESCRIPTION)


class AzureNode(Frozen):
    """This node's network interface in Azure."""

    nic: AzureName = Field(description="Name of the node's network interface (NIC) resource.")


class AzureMover(Frozen):
    """Move the VIP in an Azure virtual network: an ip-configuration (`hakit-VIP`, a static
    private IP) is removed from the other node's NIC, then added to the primary's NIC (Azure
    allows one holder per address). Credentials: Azure's default chain (environment service
    principal, workload identity, managed identity, Azure CLI login); needs
    `pip install 'hakit[azure]'`."""

    cloud: Literal["azure"] = Field(description="`azure`.")
    subscription: str = Field(
        pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
        description="Subscription id of the NICs.",
    )
    resource_group: str = Field(
        pattern=r"^[-\w._()]{1,90}$", description="Resource group of the NICs."
    )
    nodes: dict[Name, AzureNode] = Field(description="Each module node's NIC.")
    endpoint: Endpoint = Field(
        "https://management.azure.com",
        description="Azure Resource Manager endpoint (another for sovereign clouds).",
    )
    timeout: float = Field(60.0, ge=0.5, le=300, description=TIMEOUT_DESCRIPTION)


class GcpNode(Frozen):
    """This node's instance in Google Cloud."""

    instance: GcpName = Field(description="Instance name.")
    zone: GcpZone = Field(description="Instance zone, e.g. `europe-west1-b`.")
    interface: str = Field(
        "nic0", pattern=r"^nic[0-9]$", description="Network interface of the instance."
    )


class GcpMover(Frozen):
    """Move the VIP in a Google Cloud VPC: as an alias IP range (`VIP/32`) of the primary's
    network interface (removed from the other node's first), or as a route (`VIP/32`, next hop
    the primary's instance; the instances need `canIpForward`). Credentials: Application
    Default Credentials (the instance's service account, `GOOGLE_APPLICATION_CREDENTIALS`,
    gcloud's login); needs `pip install 'hakit[gcp]'`."""

    cloud: Literal["gcp"] = Field(description="`gcp`.")
    project: GcpProject = Field(description="Project id of the instances.")
    mode: Literal["alias-ip", "route"] = Field(
        "alias-ip",
        description=(
            "`alias-ip`: an alias IP range of the node's interface (the VIP in the subnet's "
            "range); `route`: a route to the VIP through the node (any address)."
        ),
    )
    network: GcpName | None = Field(
        None, description="VPC network name (`route` mode: the network of the route)."
    )
    nodes: dict[Name, GcpNode] = Field(description="Each module node's instance.")
    endpoint: Endpoint = Field(
        "https://compute.googleapis.com/compute/v1", description="Compute Engine API endpoint."
    )
    timeout: float = Field(60.0, ge=0.5, le=300, description=TIMEOUT_DESCRIPTION)


VipMover = Annotated[AwsMover | AzureMover | GcpMover, Field(discriminator="cloud")]


def check_cloud(m: ModuleConfig, cluster: Cluster) -> list[Problem]:
    """What relates `health_probe` and `vips[].mover` to the module and the cluster."""
    out: list[Problem] = []
    hp = m.health_probe
    if hp is not None:
        if hp.port == cluster.api.port:
            out.append(
                Problem(
                    ("health_probe", "port"),
                    str(hp.port),
                    "is the cluster's API port (api.port): choose another port",
                )
            )
        if hp.network is not None and hp.bind is not None:
            out.append(
                Problem(("health_probe", "network"), hp.network, "`network` or `bind`, not both")
            )
        for n in m.nodes:
            if (
                hp.network is not None
                and n in cluster.nodes
                and hp.network not in cluster.nodes[n].addresses
            ):
                out.append(
                    Problem(
                        ("health_probe", "network"),
                        hp.network,
                        f"a network of every module node ({n} has no address on it)",
                    )
                )
        repl = getattr(m, "replication", None)
        if repl is not None and hp.port == repl.port:
            out.append(
                Problem(
                    ("health_probe", "port"),
                    str(hp.port),
                    "is this module's replication.port: choose another port",
                )
            )
    for i, vip in enumerate(m.vips):
        mover = vip.mover
        if mover is None:
            continue
        loc: tuple[str | int, ...] = ("vips", i, "mover")
        if m.kind == "farm":
            out.append(
                Problem(
                    (*loc, "cloud"),
                    mover.cloud,
                    "no mover for a farm VIP (every node holds it): put the cloud's load "
                    "balancer in front of the farm, with `health_probe`",
                )
            )
            continue
        if vip.address.version != 4:
            out.append(Problem(("vips", i, "address"), str(vip.address), "an IPv4 VIP (movers)"))
        for n in m.nodes:
            if n not in mover.nodes:
                out.append(Problem((*loc, "nodes"), None, f"an entry for module node {n}"))
        for n in mover.nodes:
            if n not in m.nodes:
                out.append(
                    Problem((*loc, "nodes", n), n, f"a node of this module: {', '.join(m.nodes)}")
                )
        if isinstance(mover, AwsMover) and not mover.secondary_ip and not mover.route_tables:
            out.append(
                Problem(
                    (*loc, "route_tables"),
                    "[]",
                    "at least one route table when `secondary_ip` is false",
                )
            )
        if isinstance(mover, GcpMover) and mover.mode == "route" and mover.network is None:
            out.append(Problem((*loc, "network"), None, "the VPC network of the route"))
    return out


def object_name(ip: IPvAnyAddress) -> str:
    """The name hakit gives its cloud objects for VIP `ip`: `hakit-10-0-1-100`."""
    return "hakit-" + str(ip).replace(".", "-").replace(":", "-")
