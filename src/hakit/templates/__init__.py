"""Module templates: `hakit module new NAME --template T [--set KEY=VALUE]...`.

A template is a folder `templates/T/` shipped with hakit: `template.yaml` (what it is, its
kind, the Debian packages it needs, its variables with a default and a description), a
`module.yaml` with `{{VARIABLE}}` placeholders and its scripts (`bin/`, copied as they are).
Rendering fills the placeholders and writes a module folder that passes `hakit module check`.

Placeholders are whole YAML scalars (`address: {{VIP}}`, `- {{SERVICE}}`), and a value is
written as a quoted YAML string (JSON's syntax), so no value can add keys or lines to the module
(in a comment, a placeholder is replaced by the plain value).
A default may compose other variables (`/srv/{{MODULE}}/data`): defaults are expanded as text,
in the order the variables are declared, before they are quoted. Built-in placeholders:
`{{MODULE}}` (the module's name), `{{NODES}}` (a list: the first two nodes of the local
`cluster.yaml` for a mirror, all of them for a farm; `--set NODES=a,b` chooses) and
`{{NETWORK}}` (the cluster's first network; `--set NETWORK=` chooses). A variable declared
`list: true` becomes a YAML list (its items separated by commas or spaces).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import Field

from hakit.config.load import parse_yaml, read_text, validate
from hakit.config.model import Cluster, Frozen, Regex
from hakit.config.module import MODULE_FILE, MODULE_NAME, EnvName, load_module
from hakit.daemon.packages import PACKAGE_SUFFIX, package_bytes
from hakit.errors import ConfigError, ConfigIssue, HakitError

TEMPLATES_DIR = Path(__file__).resolve().parent
TEMPLATE_FILE = "template.yaml"
BUILTINS = ("MODULE", "NODES", "NETWORK")
PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
# a placeholder that is a whole scalar: after `key: `, `- `, `[` or `, `; before the end of
# the line, a comment, `,`, `]` or `}`
WHOLE = re.compile(
    r"(?:(?<=: )|(?<=- )|(?<=\[)|(?<=, ))\{\{[A-Za-z_][A-Za-z0-9_]*\}\}(?=\s*(?:$|,|\]|\}))"
)
MAX_VALUE = 1000  # characters of one value


class Variable(Frozen):
    """One setting of a template, given with `--set NAME=VALUE`."""

    default: str = Field(description="Value when not given (may use other `{{VARIABLES}}`).")
    description: str = Field(min_length=1, description="What it sets, in a few words.")
    pattern: Regex | None = Field(
        None, description="Regular expression a given value must match (whole value)."
    )
    list: bool = Field(
        False, description="A list: the value's items are separated by commas or spaces."
    )


class Template(Frozen):
    """`templates/T/template.yaml`."""

    description: str = Field(min_length=1, description="What the module runs, in one line.")
    kind: Literal["mirror", "farm"] = Field(description="The kind of module it makes.")
    packages: tuple[str, ...] = Field((), description="Debian packages every node needs.")
    variables: dict[EnvName, Variable] = Field(default_factory=dict)
    doc: str = Field("", description="The template's page under docs/modules/.")


@dataclass(frozen=True)
class Shipped:
    name: str
    folder: Path
    spec: Template


def names() -> list[str]:
    """The shipped templates, by name."""
    return sorted(p.parent.name for p in TEMPLATES_DIR.glob(f"*/{TEMPLATE_FILE}"))


def load(name: str) -> Shipped:
    """The template `name`; an error lists the shipped ones."""
    if name not in names():
        raise HakitError(f"no template {name!r}; templates: {', '.join(names())}")
    folder = TEMPLATES_DIR / name
    file = str(folder / TEMPLATE_FILE)
    data, marks = parse_yaml(read_text(folder / TEMPLATE_FILE), file)
    spec: Template = validate(Template, data, marks, file)
    clash = sorted(set(spec.variables) & set(BUILTINS))
    if clash:
        raise HakitError(f"{file}: {', '.join(clash)}: built-in placeholders, not variables")
    return Shipped(name, folder, spec)


def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (`--set`) as a mapping; a malformed or repeated one is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HakitError(f"--set {item!r}: expected KEY=VALUE")
        if key in out:
            raise HakitError(f"--set {key}: given twice")
        out[key] = value
    return out


def _check_value(key: str, value: str) -> None:
    if len(value) > MAX_VALUE:
        raise HakitError(f"--set {key}: longer than {MAX_VALUE} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise HakitError(f"--set {key}: control characters (a newline, a tab…) are not allowed")


def _expand(text: str, known: Mapping[str, str | list[str]], where: str) -> str:
    def one(m: re.Match[str]) -> str:
        value = known.get(m.group(1))
        if not isinstance(value, str):
            raise HakitError(f"{where}: {{{{{m.group(1)}}}}} is not a variable declared before it")
        return value

    return PLACEHOLDER.sub(one, text)


def values_for(
    t: Shipped, module: str, given: Mapping[str, str], cluster: Cluster | None
) -> dict[str, str | list[str]]:
    """Every placeholder's value: the built-ins, then each variable (given, else its default)."""
    if not MODULE_NAME.match(module):
        raise HakitError(
            f"module name {module!r}: a letter, then letters, digits, '_' or '-' (at most 32)"
        )
    known_keys = [*BUILTINS[1:], *t.spec.variables]
    unknown = sorted(set(given) - set(known_keys))
    if unknown:
        raise HakitError(
            f"template {t.name} has no variable {', '.join(unknown)}; "
            f"its variables: {', '.join(known_keys)}"
        )
    for key, value in given.items():
        _check_value(key, value)
    values: dict[str, str | list[str]] = {"MODULE": module}
    values["NODES"] = _nodes(t.spec.kind, given.get("NODES"), cluster)
    first_network = next(iter(cluster.networks)) if cluster else "net1"
    values["NETWORK"] = given.get("NETWORK") or first_network
    for key, var in t.spec.variables.items():
        if key in given:
            value = given[key]
            if var.pattern is not None and not re.fullmatch(var.pattern, value):
                raise HakitError(f"--set {key}={value!r}: does not match {var.pattern!r}")
        else:
            value = _expand(var.default, values, f"{t.name}/{TEMPLATE_FILE}: {key}")
        values[key] = value.replace(",", " ").split() if var.list else value
    return values


def _nodes(kind: str, given: str | None, cluster: Cluster | None) -> list[str]:
    if given is not None:
        nodes = [n.strip() for n in given.split(",") if n.strip()]
        bad = [n for n in nodes if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", n)]
        if bad or not nodes:
            raise HakitError(f"--set NODES={given!r}: node names separated by commas")
        return nodes
    if cluster is None:
        return ["node1", "node2"] if kind == "mirror" else ["node1", "node2", "node3"]
    names_ = list(cluster.nodes)
    return names_[:2] if kind == "mirror" else names_


def _split_comment(line: str) -> tuple[str, str]:
    """(YAML part, comment part) of a template line: the comment starts at a `#` that begins
    the line or follows a blank (templates put no `#` inside their values)."""
    m = re.search(r"(?:^|\s)#", line)
    return (line, "") if m is None else (line[: m.start()], line[m.start() :])


def render_text(text: str, values: Mapping[str, str | list[str]], file: str) -> str:
    """`text` with every placeholder replaced: by its quoted value in YAML, as plain text in a
    comment; a placeholder that is not a whole value, or that names nothing, is an error with
    its line."""
    issues = []
    lines = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        code, comment = _split_comment(line)
        whole = {m.start() for m in WHOLE.finditer(code)}
        for m in PLACEHOLDER.finditer(line):
            if m.group(1) not in values:
                issues.append(ConfigIssue(file, number, "", m.group(0), "no such variable"))
            elif m.start() < len(code) and m.start() not in whole:
                issues.append(
                    ConfigIssue(file, number, "", m.group(0), "a placeholder must be a whole value")
                )
        if issues:
            continue
        code = PLACEHOLDER.sub(lambda m: json.dumps(values[m.group(1)]), code)
        comment = PLACEHOLDER.sub(lambda m: _plain(values[m.group(1)]), comment)
        lines.append(code + comment)
    if issues:
        raise ConfigError(issues)
    return "".join(lines)


def _plain(value: str | list[str]) -> str:
    return value if isinstance(value, str) else ", ".join(value)


def render(
    template: str,
    module: str,
    dest_dir: Path,
    given: Mapping[str, str] | None = None,
    cluster: Cluster | None = None,
) -> Path:
    """Write the module folder `dest_dir/module` from `template`; nothing is written when
    anything is wrong (an existing folder is never touched). Returns the folder."""
    t = load(template)
    values = values_for(t, module, given or {}, cluster)
    target = dest_dir / module
    if target.exists() or target.is_symlink():
        raise HakitError(f"{target} already exists: nothing written (choose another name)")
    text = render_text((t.folder / MODULE_FILE).read_text(), values, f"{t.name}/{MODULE_FILE}")
    with tempfile.TemporaryDirectory(prefix=f".{module}-", dir=dest_dir) as tmp:
        work = Path(tmp) / module
        shutil.copytree(
            t.folder, work, ignore=shutil.ignore_patterns(TEMPLATE_FILE, "__pycache__", "*.pyc")
        )
        (work / MODULE_FILE).write_text(text)
        try:
            load_module(work, cluster, module)  # fails here, before the folder appears
        except ConfigError as e:
            raise ConfigError(
                [replace(i, file=i.file.replace(str(work), str(target), 1)) for i in e.issues]
            ) from None
        os.rename(work, target)
    return target


def build_packages(out_dir: Path) -> list[Path]:
    """`T.hakit` for every template, rendered with its defaults (the build ships them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="hakit-templates-") as tmp:
        for name in names():
            folder = render(name, name, Path(tmp))
            pkg = out_dir / f"{name}{PACKAGE_SUFFIX}"
            pkg.write_bytes(package_bytes(folder))
            written.append(pkg)
    return written
