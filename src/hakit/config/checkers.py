"""Checker configuration: the failure detectors of a module (`checkers:` in `module.yaml`).

A checker probes one resource every `interval` (a probe may take at most `timeout`), needs
`fall` failed probes in a row to declare it down and `rise` good ones to declare it up again,
is active only where `when` says, and answers a failure with `action`. Loop protection
(`recovery:` of the module) bounds the automatic recoveries. The models are discriminated by
`type`; every field description feeds `docs/config-reference.md`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, IPvAnyAddress, StringConstraints, model_validator

from hakit.config.model import Frozen, Name, Regex

Action = Literal["restart", "stopstart", "stop", "wait", "none"]
When = Literal["before-start", "primary", "secondary", "every-node"]
ACTIONS: tuple[str, ...] = ("restart", "stopstart", "stop", "wait", "none")
WHENS: tuple[str, ...] = ("before-start", "primary", "secondary", "every-node")

Interface = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,15}$")]


class CheckerBase(Frozen):
    name: Name = Field(description="Name of the checker, unique in the module (timeline, CLI).")
    interval: float = Field(1.0, ge=0.1, le=3600, description="Seconds between two probes.")
    timeout: float = Field(
        1.0,
        ge=0.05,
        le=600,
        description="Seconds a probe may take; a probe still running then is killed and fails.",
    )
    fall: int = Field(
        3, ge=1, le=100, description="Failed probes in a row before the resource is down."
    )
    rise: int = Field(
        2, ge=1, le=100, description="Good probes in a row before the resource is up again."
    )
    when: When | None = Field(
        None,
        description=(
            "Where the checker is active: `before-start` (from `hakit start` on, before the "
            "application starts: the module waits for it), `primary`, `secondary` (mirror), "
            "`every-node` (wherever the application runs: primary and secondary of a mirror, "
            "every UP node of a farm). Default: `before-start` for a `wait` checker, else "
            "`primary` in a mirror, `every-node` in a farm. A `wait` checker that is down keeps "
            "probing wherever the module is started, until the resource is back."
        ),
    )
    action: Action | None = Field(
        None,
        description=(
            "What a failure does: `restart` the application here (a secondary restarts its "
            "side), `stopstart` the module (a primary fails over), `stop` the module here, "
            "`wait` (stop the application and hold the module in WAIT until the resource is "
            "back, then resume by itself), `none` (report only). Default: `restart` for "
            "process, tcp, http and custom checkers, `wait` for interface, ping and module "
            "checkers, `stopstart` for vip checkers."
        ),
    )

    DEFAULT_ACTION: ClassVar[str] = "restart"

    @property
    def effective_action(self) -> str:
        return self.action or self.DEFAULT_ACTION

    def effective_when(self, kind: str) -> str:
        if self.when is not None:
            return self.when
        if self.effective_action == "wait":
            return "before-start"
        return "primary" if kind == "mirror" else "every-node"

    @model_validator(mode="after")
    def _timing(self) -> CheckerBase:
        if self.timeout > self.interval * self.fall + 60:
            raise ValueError("`timeout` longer than `interval` × `fall` + 60 s")
        return self

    def describe(self) -> str:
        """What is probed, in a few words (timeline lines)."""
        raise NotImplementedError


class ProcessChecker(CheckerBase):
    """Processes of the application: by name, by a regular expression on the command line, or
    a systemd unit being active."""

    type: Literal["process"] = Field(description="`process`.")
    process: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Process name (as in `ps -o comm`, or the base name of its program).",
    )
    regex: Regex | None = Field(
        None,
        description="Regular expression (Python) searched in the full command line.",
    )
    unit: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9:_.@\\-]{1,255}$",
        description="systemd unit that must be active (`systemctl is-active`).",
    )
    min: int = Field(1, ge=0, le=100000, description="Fewest matching processes allowed.")
    max: int | None = Field(
        None, ge=1, le=100000, description="Most matching processes allowed (none: no limit)."
    )

    @model_validator(mode="after")
    def _one_selector(self) -> ProcessChecker:
        given = [k for k in ("process", "regex", "unit") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `process`, `regex` or `unit`")
        if self.max is not None and self.max < self.min:
            raise ValueError("`max` is below `min`")
        if self.unit is not None and (self.min != 1 or self.max is not None):
            raise ValueError("`min`/`max` do not apply to a systemd `unit`")
        return self

    def describe(self) -> str:
        if self.unit is not None:
            return f"unit {self.unit}"
        what = f"process {self.process}" if self.process else f"processes /{self.regex}/"
        bound = f"{self.min}..{self.max}" if self.max is not None else f"≥ {self.min}"
        return f"{what} ({bound})"


class TcpChecker(CheckerBase):
    """A TCP connection to the application succeeds."""

    type: Literal["tcp"] = Field(description="`tcp`.")
    host: str = Field("127.0.0.1", min_length=1, max_length=255, description="Address or name.")
    port: int = Field(ge=1, le=65535, description="TCP port.")

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


class HttpChecker(CheckerBase):
    """An HTTP(S) request answers with an expected status (and body)."""

    type: Literal["http"] = Field(description="`http`.")
    url: str = Field(
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        max_length=2000,
        description="`http://` or `https://` URL, e.g. `http://127.0.0.1:8080/health`.",
    )
    status: tuple[int, ...] = Field(
        (200,), min_length=1, description="Status codes that mean up (default 200)."
    )
    body: Regex | None = Field(
        None, description="Regular expression the body must contain (first 64 KiB)."
    )
    verify_tls: bool = Field(
        False,
        description=(
            "Check the server's certificate (off by default: local health URLs rarely have a "
            "certificate for the address they are reached on)."
        ),
    )

    @model_validator(mode="after")
    def _valid(self) -> HttpChecker:
        if any(not 100 <= s <= 599 for s in self.status):
            raise ValueError("`status` codes are between 100 and 599")
        return self

    def describe(self) -> str:
        return f"http {self.url}"


class PingChecker(CheckerBase):
    """An ICMP echo to an address is answered (a router, a gateway, a storage box)."""

    type: Literal["ping"] = Field(description="`ping`.")
    address: IPvAnyAddress = Field(description="IP address to ping.")
    DEFAULT_ACTION: ClassVar[str] = "wait"

    def describe(self) -> str:
        return f"ping {self.address}"


class InterfaceChecker(CheckerBase):
    """A network interface is up with its link (carrier) present."""

    type: Literal["interface"] = Field(description="`interface`.")
    interface: Interface = Field(description="Interface name, e.g. `eth0`.")
    DEFAULT_ACTION: ClassVar[str] = "wait"

    def describe(self) -> str:
        return f"interface {self.interface}"


class VipChecker(CheckerBase):
    """Every virtual IP of the module is still on this node (someone deleted it, an interface
    was reset). Active where the node holds the VIPs."""

    type: Literal["vip"] = Field(description="`vip`.")
    DEFAULT_ACTION: ClassVar[str] = "stopstart"

    def describe(self) -> str:
        return "virtual IPs present"


class CustomChecker(CheckerBase):
    """A program of yours: its exit status (`exit`), or a long-running program that prints
    `up` or `down` lines (`stream`)."""

    type: Literal["custom"] = Field(description="`custom`.")
    command: tuple[str, ...] = Field(
        min_length=1,
        description=(
            "Program and arguments; a program name without `/` is the module's own when it is "
            "in its `bin/`, else it is looked up on PATH. "
            "It gets the same environment as the module's scripts."
        ),
    )
    mode: Literal["exit", "stream"] = Field(
        "exit",
        description=(
            "`exit`: run every `interval`, exit status 0 = up; `stream`: started once and "
            "kept running, each line it prints starting with `up` or `down` is a result "
            "(the rest of the line is the detail); a line-less `timeout`, or its exit, is a "
            "failure (it is started again)."
        ),
    )

    def describe(self) -> str:
        return f"program {' '.join(self.command)}"


class RemoteCluster(Frozen):
    """Another hakit cluster, read through the API of its nodes (`GET /v1/state`, mutual TLS,
    signed)."""

    name: Name = Field(description="Its cluster name (`cluster` in its cluster.yaml).")
    nodes: dict[Name, IPvAnyAddress] = Field(
        min_length=1,
        description="Its nodes, each with the address of its API, tried in turn (the name is "
        "checked in the node's TLS certificate).",
    )
    port: int = Field(7351, ge=1, le=65535, description="Its `api.port`.")
    secret_file: str = Field(
        pattern=r"^/\S+$",
        description="Absolute path of a copy of its `cluster.key` (mode 0600).",
    )


class ModuleChecker(CheckerBase):
    """Another module of this cluster, or of another cluster, is in an expected state (a
    dependency)."""

    type: Literal["module"] = Field(description="`module`.")
    module: Name = Field(
        description="The module depended on (installed on this node, or in `cluster`)."
    )
    cluster: RemoteCluster | None = Field(
        None, description="The other cluster it runs in (none: this cluster)."
    )
    node: Name | None = Field(
        None,
        description="Node it must be in that state on (none: on any of its nodes).",
    )
    states: tuple[Literal["PRIM", "ALONE", "SECOND", "UP"], ...] = Field(
        ("PRIM", "ALONE", "UP"),
        min_length=1,
        description="States that mean up (with status `ready`).",
    )
    DEFAULT_ACTION: ClassVar[str] = "wait"

    def describe(self) -> str:
        where = f" on {self.node}" if self.node else ""
        of = f" of cluster {self.cluster.name}" if self.cluster else ""
        return f"module {self.module}{of}{where} {'/'.join(self.states)}"


Checker = Annotated[
    ProcessChecker
    | TcpChecker
    | HttpChecker
    | PingChecker
    | InterfaceChecker
    | VipChecker
    | CustomChecker
    | ModuleChecker,
    Field(discriminator="type"),
]
CHECKER_TYPES: tuple[str, ...] = (
    "process",
    "tcp",
    "http",
    "ping",
    "interface",
    "vip",
    "custom",
    "module",
)


class Recovery(Frozen):
    """Loop protection: automatic recoveries (restarts, stopstarts) allowed in a time window;
    one more failure stops the module on this node with a message. Operator commands
    (`start`, `restart`, `stopstart`…) reset the count."""

    max: int = Field(3, ge=0, le=1000, description="Automatic recoveries allowed within `window`.")
    window: float = Field(
        86400.0, gt=0, le=30 * 86400, description="Seconds over which recoveries are counted."
    )
