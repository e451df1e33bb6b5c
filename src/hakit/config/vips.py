"""A module's virtual IPs: where each goes, how it is probed, and how a cloud moves it.

Used by both kinds of module (`config/module.py`); the cloud movers are in `config/cloud.py`.
"""

from __future__ import annotations

from pydantic import Field, IPvAnyInterface, model_validator

from hakit.config.cloud import VipMover
from hakit.config.model import Frozen, Name


class VipProbe(Frozen):
    """Duplicate address detection before a mirror module's primary takes the VIP (RFC 5227,
    shortened for the failover path): ARP probes; an answer from a host that is not the peer
    node refuses the VIP (the module's start fails with the MAC that answered)."""

    count: int = Field(
        2,
        ge=0,
        le=10,
        description="ARP probes sent (0: no probe). IPv4 only: IPv6 VIPs are not probed.",
    )
    interval: float = Field(
        0.05,
        ge=0.005,
        le=1.0,
        description=(
            "Seconds between two probes and after the last one: the probe adds "
            "`count` × `interval` to every start as primary (0.1 s by default) when nobody "
            "answers, and ends at the first answer."
        ),
    )


class VirtualIp(Frozen):
    """A virtual IP address held by the primary only."""

    address: IPvAnyInterface = Field(
        description="Address with its prefix length, e.g. `192.168.1.100/24`."
    )
    network: Name | None = Field(
        None,
        description=(
            "Cluster network carrying the VIP: it goes on the interface that holds the node's "
            "address on that network. Give `network` or `interface`."
        ),
    )
    interface: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:-]{1,15}$",
        description="Interface name carrying the VIP (same name on both nodes).",
    )
    probe: VipProbe = Field(
        default_factory=VipProbe,
        description="Probe for another host using the address before taking it (mirror).",
    )
    mover: VipMover | None = Field(
        None,
        description=(
            "Move the VIP by a cloud API call (mirror modules, clouds without layer 2: AWS, "
            "Azure, GCP; see [cloud](cloud.md)). The VIP is still added to the interface; "
            "with a mover the cloud, not an ARP probe, says who holds the address."
        ),
    )

    @model_validator(mode="after")
    def _one_place(self) -> VirtualIp:
        if (self.network is None) == (self.interface is None):
            raise ValueError("give exactly one of `network` or `interface`")
        return self
