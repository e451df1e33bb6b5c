"""Load configuration files into frozen models, or fail with every problem, precisely located.

Each reported problem names the file, the line, the field (dotted path), the bad value and what
is expected. Unknown keys and duplicate keys are errors. Nothing is partially loaded.
"""

from __future__ import annotations

import os
import stat
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hakit.config import rules, safeyaml
from hakit.config.model import NAME_PATTERN, Cluster
from hakit.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class Marks:
    """Line numbers (1-based) of every key and value of a YAML document, by path."""

    keys: dict[Loc, int]
    values: dict[Loc, int]

    def line(self, loc: Loc, *, value: bool = True) -> int | None:
        """Line of the deepest known prefix of `loc` (the value's line if asked and known)."""
        for n in range(len(loc), -1, -1):
            prefix = loc[:n]
            if value and n == len(loc) and prefix in self.values:
                return self.values[prefix]
            if prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return None


def _walk(node: yaml.Node, loc: Loc, marks: Marks, issues: list[ConfigIssue], file: str) -> None:
    marks.values[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                issues.append(
                    ConfigIssue(
                        file,
                        key_node.start_mark.line + 1,
                        dotted((*loc, key)),
                        None,
                        "duplicate key: each key may appear only once in a mapping",
                    )
                )
            seen.add(key)
            marks.keys[(*loc, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*loc, key), marks, issues, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), marks, issues, file)


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_yaml(text: str, file: str) -> tuple[Any, Marks]:
    """Parse YAML text (bounded: see `safeyaml`); every error, duplicate keys included, is a
    `ConfigError`."""
    data, root = safeyaml.load(text, file)
    marks = Marks({}, {})
    issues: list[ConfigIssue] = []
    if root is not None:
        _walk(root, (), marks, issues, file)
    if issues:
        raise ConfigError(issues)
    return data, marks


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _member(annotation: Any, data: Any) -> Any:
    """The member of a union discriminated by `type` that `data` selects (or the annotation)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _member(args[0], data)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and isinstance(data, dict):
        for a in args:
            f = getattr(a, "model_fields", {}).get("type")
            if f is not None and data.get("type") in typing.get_args(f.annotation):
                return a
    return annotation


def _tags(annotation: Any) -> list[str]:
    """The values of `type` a union discriminated by it accepts."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _tags(args[0])
    out = []
    for a in args:
        f = getattr(a, "model_fields", {}).get("type")
        if f is not None:
            out += [str(t) for t in typing.get_args(f.annotation)]
    return out


def _allowed_keys(model: type[BaseModel], loc: Loc, data: Any) -> list[str] | None:
    """The field names accepted at `loc` (the parent of an unknown key), if `loc` is a model."""
    current = _model_at(model, loc, data)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _model_at(model: type[BaseModel], loc: Loc, data: Any) -> Any:
    """The model (or type) that validates the value at `loc` of the document `data`."""
    current: Any = model
    for part in loc:
        data = _child(data, part)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _member(field.annotation, data)
            continue
        # a dict[Name, Model] or a tuple[Model, ...]: the item's model
        args = [a for a in typing.get_args(current) if a is not Ellipsis]
        current = _member(args[-1], data) if args else None
    return _member(current, data)


def _description(model: type[BaseModel], loc: Loc, data: Any) -> str:
    """The description of the field at `loc` (what a value must look like)."""
    parent: Any = model
    if loc[:-1]:
        allowed = _allowed_keys(model, loc[:-1], data)
        if allowed is None:
            return "a value of the documented form"
        parent = _model_at(model, loc[:-1], data)
    field = getattr(parent, "model_fields", {}).get(str(loc[-1]))
    desc = field.description if field is not None else None
    return (desc or "a value of the documented form").rstrip(".")


def _data_loc(data: Any, loc: Loc) -> Loc:
    """The error's path in the document: without the tags pydantic inserts for a union
    discriminated by `type` (`checkers.0.tcp.port` is `checkers[0].port` in the file)."""
    out: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(current, dict) and current.get("type") == part:
            continue  # the tag pydantic puts in front of a union member's own path
        out.append(part)
        current = _child(current, part)
    return tuple(out)


def _expected(err: Any, model: type[BaseModel], loc: Loc, data: Any) -> str:
    kind = err["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what = "required key `type` is missing" if kind == "union_tag_not_found" else "expected"
        return f"{what}: one of {', '.join(err['tags'])}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1], data)
        return "unknown key" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind in ("too_short", "too_long"):
        ctx = err.get("ctx", {})
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        what = "character" if ctx.get("field_type") == "Value" else "item"
        desc = _description(model, loc, data)
        return (
            f"expected {'at least' if kind == 'too_short' else 'at most'} {bound} {what}"
            f"{'' if bound == 1 else 's'}, got {ctx.get('actual_length')}"
            + ("" if desc.startswith("a value of") else f" ({desc[0].lower()}{desc[1:]})")
        )
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return "expected a name: a letter, then letters, digits, '_' or '-' (at most 32 characters)"
    if kind == "string_pattern_mismatch":
        return "expected: " + _description(model, loc, data)
    if kind.startswith("ip_"):
        return "expected an IPv4 or IPv6 address"
    if msg.startswith("Input should be "):
        return "expected " + msg[len("Input should be ") :]
    return "expected: " + msg[0].lower() + msg[1:] if msg else kind


def _child(data: Any, part: str | int) -> Any:
    """The value under key or index `part` of `data` (None when there is none)."""
    if isinstance(data, dict):
        return data.get(part)
    if isinstance(data, list) and isinstance(part, int) and part < len(data):
        return data[part]
    return None


def _member_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = _child(data, part)
    return data


def _short_lists(data: Any, exc: ValidationError) -> dict[Loc, int]:
    """Lists of a fixed length given too few items: their location -> the length expected."""
    out: dict[Loc, int] = {}
    for err in exc.errors():
        loc = _data_loc(data, tuple(err["loc"]))
        at_item = err["type"] == "missing" and loc and isinstance(loc[-1], int)
        if at_item and isinstance(_member_at(data, loc[:-1]), list):
            out[loc[:-1]] = max(out.get(loc[:-1], 0), int(loc[-1]) + 1)
    return out


def validate(model: type[BaseModel], data: Any, marks: Marks, file: str) -> Any:
    """Validate parsed data against a model; every pydantic error becomes a located issue."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(file, 1, "", _show(data), "expected a mapping of keys to values")]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues: list[ConfigIssue] = []
        seen: set[tuple[Loc, str]] = set()
        short = _short_lists(data, exc)
        for raw in exc.errors():
            err: dict[str, Any] = dict(raw)
            loc: Loc = _data_loc(data, tuple(err["loc"]))
            if err["type"] == "missing" and loc[:-1] in short:
                # the items a fixed-length list lacks: one issue for the list
                have = len(_member_at(data, loc[:-1]))
                loc = loc[:-1]
                err = {
                    **err,
                    "type": "too_short",
                    "input": _member_at(data, loc),
                    "ctx": {"min_length": short[loc], "actual_length": have},
                }
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                tags = _tags(_model_at(model, loc, data))
                err = {**err, "input": err.get("ctx", {}).get("tag"), "tags": tags}
                loc = (*loc, "type")
            on_key = err["type"] == "extra_forbidden"
            if "[key]" in loc:  # a bad name used as a key: blame the key itself
                loc, on_key = loc[: loc.index("[key]")], True
            expected = _expected(err, model, loc, data)
            if (loc, err["type"]) in seen:
                continue
            seen.add((loc, err["type"]))
            missing = err["type"] in ("missing", "union_tag_not_found")
            value = None if missing else _show(err.get("input"))
            whole = err["type"] == "value_error" and isinstance(err.get("input"), dict)
            if err["type"] == "extra_forbidden" or whole:
                value = None  # a rule over a whole mapping: its line and the message say enough
            line = marks.line(loc, value=not on_key)
            issues.append(ConfigIssue(file, line, dotted(loc), value, expected))
        raise ConfigError(issues) from None


@dataclass(frozen=True)
class ClusterFile:
    """A loaded, validated cluster configuration with its secret (never printed)."""

    path: Path
    config: Cluster
    secret: bytes = b""

    def __repr__(self) -> str:
        return f"ClusterFile(path={self.path!s}, cluster={self.config.cluster!r})"


CLUSTER_MISSING = (
    "file not found; create it with `hakit cluster init` "
    "(or set HAKIT_ETC to the folder holding cluster.yaml)"
)


MAX_PEM = 1 << 20  # bytes of a TLS file read to check it


def read_text(path: Path, missing: str = CLUSTER_MISSING) -> str:
    """The text of a configuration file; `missing`: what to say when it does not exist."""
    try:
        return safeyaml.read_file(path)
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(str(path), None, "", None, missing)]) from None
    except OSError as e:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", None, f"cannot read: {e.strerror or e}")]
        ) from None


def load_secret(path: Path, config_file: str, line: int | None) -> bytes:
    def issue(expected: str) -> ConfigError:
        return ConfigError([ConfigIssue(config_file, line, "secret_file", str(path), expected)])

    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise issue("secret file not found; `hakit cluster init` creates one") from None
    except OSError as e:
        raise issue(f"cannot read secret file: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise issue(
            f"secret file is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    secret = raw.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise issue(f"secret is {len(secret)} bytes long; expected at least {MIN_SECRET_BYTES}")
    return secret


def load_cluster(path: Path, *, with_secret: bool = True) -> ClusterFile:
    """Load and fully check `cluster.yaml` (and its secret): the one way to get a `Cluster`."""
    return load_cluster_text(read_text(path), path, with_secret=with_secret)


def load_cluster_text(text: str, path: Path, *, with_secret: bool = True) -> ClusterFile:
    """`load_cluster` of `text` as if it were the file at `path` (a configuration sent to be
    checked or applied: errors name `path`, a relative `secret_file` is beside it)."""
    file = str(path)
    if len(text.encode()) > safeyaml.MAX_BYTES:
        raise ConfigError(
            [ConfigIssue(file, None, "", None, f"larger than {safeyaml.MAX_BYTES} bytes")]
        )
    data, marks = parse_yaml(text, file)
    config: Cluster = validate(Cluster, data, marks, file)
    issues = [
        ConfigIssue(file, marks.line(p.loc), dotted(p.loc), p.value, p.expected)
        for p in rules.check_cluster(config)
    ]
    if issues:
        raise ConfigError(issues)
    secret = b""
    if with_secret:
        secret_path = Path(config.secret_file)
        if not secret_path.is_absolute():
            secret_path = path.parent / secret_path
        secret = load_secret(secret_path, file, marks.line(("secret_file",)))
        etcd_issues = [
            ConfigIssue(file, marks.line(loc), dotted(loc), value, expected)
            for loc, value, expected in check_etcd_files(config, path.parent)
        ]
        if etcd_issues:
            raise ConfigError(etcd_issues)
    return ClusterFile(path=path, config=config, secret=secret)


def etcd_file(config: Cluster, folder: Path, field: str) -> Path:
    """The path of `etcd.ca`, `etcd.cert` or `etcd.key` (relative: to `cluster.yaml`'s folder)."""
    assert config.etcd is not None
    given = Path(getattr(config.etcd, field))
    return given if given.is_absolute() else folder / given


def check_etcd_files(config: Cluster, folder: Path) -> list[tuple[tuple[str, ...], str, str]]:
    """The etcd TLS files exist and are PEM; the key is not readable by other users."""
    out: list[tuple[tuple[str, ...], str, str]] = []
    if config.etcd is None:
        return out
    for field, marker in (
        ("ca", b"CERTIFICATE"),
        ("cert", b"CERTIFICATE"),
        ("key", b"PRIVATE KEY"),
    ):
        p = etcd_file(config, folder, field)
        loc = ("etcd", field)
        try:
            st = p.stat()
            with p.open("rb") as f:
                head = f.read(MAX_PEM)
        except FileNotFoundError:
            out.append((loc, str(p), "file not found"))
            continue
        except OSError as e:
            out.append((loc, str(p), f"cannot read: {e.strerror or e}"))
            continue
        if b"-----BEGIN " not in head or marker not in head:
            out.append((loc, str(p), f"expected a PEM file with a {marker.decode().lower()}"))
        elif field == "key" and stat.S_IMODE(st.st_mode) & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            out.append(
                (loc, str(p), f"accessible to other users (mode {mode:04o}); run `chmod 600 {p}`")
            )
    return out


def env_override(name: str) -> str | None:
    return os.environ.get(name)
