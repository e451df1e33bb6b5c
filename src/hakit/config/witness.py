"""`witness.yaml`: the configuration of a split-brain witness, typed, frozen, loaded in one place.

The witness runs on a third machine and serves any number of clusters: for each one it needs
the cluster's secret (the same `cluster.key` as the nodes) to authenticate their requests.
Like `cluster.yaml`, every error names the file, the line, the field, the bad value and what is
expected; unknown keys are errors; nothing starts on a bad file. Field descriptions are the
documentation (docs/witness.md quotes them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import Field, IPvAnyAddress

from hakit.config.load import dotted, load_secret, parse_yaml, read_text, validate
from hakit.config.model import Frozen, Name
from hakit.errors import ConfigError, ConfigIssue

DEFAULT_PORT = 7355
DEFAULT_QUARANTINE = 10.0
FILE_NAME = "witness.yaml"


class WitnessCluster(Frozen):
    """A cluster this witness arbitrates."""

    secret_file: str = Field(
        min_length=1,
        description=(
            "File holding the cluster's secret: a copy of the nodes' `cluster.key` (at least 16 "
            "bytes, mode 0600). A relative path is relative to the folder of `witness.yaml`."
        ),
    )


class WitnessConfig(Frozen):
    """`/etc/hakit/witness.yaml`: on the witness machine only."""

    listen: tuple[IPvAnyAddress, ...] = Field(
        (ipaddress.IPv4Address("0.0.0.0"),),
        min_length=1,
        description=(
            "IP addresses (IPv4 or IPv6) the witness receives requests on; `0.0.0.0` is every "
            "IPv4 address of the machine, `::` every IPv6 address. Give one address per network "
            "the nodes may reach the witness through."
        ),
    )
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="UDP port the witness listens on.")
    quarantine: float = Field(
        DEFAULT_QUARANTINE,
        gt=0,
        le=3600,
        description=(
            "Seconds after the witness starts during which it grants no new lease: a restarted "
            "witness has forgotten the leases it granted, and they must all have run out "
            "before it grants one to another node. Requests whose ttl + grace exceeds it are "
            "refused."
        ),
    )
    clusters: dict[Name, WitnessCluster] = Field(
        min_length=1, description="The clusters this witness serves, by cluster name."
    )


@dataclass(frozen=True)
class WitnessFile:
    """A loaded, validated witness configuration with each cluster's secret (never printed)."""

    path: Path
    config: WitnessConfig
    secrets: Mapping[str, bytes]

    def __repr__(self) -> str:
        return f"WitnessFile(path={self.path!s}, clusters={list(self.config.clusters)!r})"


def default_path(etc: Path) -> Path:
    return etc / FILE_NAME


def load_witness(path: Path) -> WitnessFile:
    """Load and fully check `witness.yaml` and every cluster's secret, or raise `ConfigError`."""
    file = str(path)
    missing = (
        "file not found; write it as described in docs/witness.md "
        "(or pass --config PATH, or set HAKIT_ETC to the folder holding it)"
    )
    data, marks = parse_yaml(read_text(path, missing), file)
    config: WitnessConfig = validate(WitnessConfig, data, marks, file)
    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}
    for i, address in enumerate(config.listen):
        text = str(address)
        if text in seen:
            issues.append(
                ConfigIssue(
                    file,
                    marks.line(("listen", i)),
                    dotted(("listen", i)),
                    text,
                    f"address already listed as listen[{seen[text]}]; each address once",
                )
            )
        seen.setdefault(text, i)
    secrets: dict[str, bytes] = {}
    for name, spec in config.clusters.items():
        loc = ("clusters", name, "secret_file")
        secret_path = Path(spec.secret_file)
        if not secret_path.is_absolute():
            secret_path = path.parent / secret_path
        try:
            secrets[name] = load_secret(secret_path, file, marks.line(loc))
        except ConfigError as e:  # the loader names the cluster file's field: name ours
            issues.extend(
                replace(
                    i,
                    field=dotted(loc),
                    expected=i.expected.replace(
                        "`hakit cluster init` creates one",
                        "copy the cluster's cluster.key here (mode 0600)",
                    ),
                )
                for i in e.issues
            )
    if issues:
        raise ConfigError(issues)
    return WitnessFile(path=path, config=config, secrets=secrets)
