"""witness.yaml: a valid file loads; every kind of error names file, line, field, value."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hakit.config.starter import new_secret
from hakit.config.witness import WitnessConfig, load_witness
from hakit.errors import ConfigError

GOOD = """\
listen: [127.0.0.1, "::1"]
port: 17355
quarantine: 12
clusters:
  shop:
    secret_file: shop.key
  plant:
    secret_file: {plant_key}
"""


def write(tmp_path: Path, text: str, *, mode: int = 0o600, secret: str | None = None) -> Path:
    (tmp_path / "shop.key").write_text(new_secret() if secret is None else secret)
    (tmp_path / "shop.key").chmod(mode)
    plant = tmp_path / "other" / "plant.key"
    plant.parent.mkdir(exist_ok=True)
    plant.write_text(new_secret())
    plant.chmod(0o600)
    cfg = tmp_path / "witness.yaml"
    cfg.write_text(text.replace("{plant_key}", str(plant)))
    return cfg


def issues(tmp_path: Path, text: str, **kw: object) -> list[str]:
    path = write(tmp_path, text, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        load_witness(path)
    return [str(i) for i in exc.value.issues]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_valid_file_loads_with_both_secrets(tmp_path: Path) -> None:
    wf = load_witness(write(tmp_path, GOOD))
    c: WitnessConfig = wf.config
    assert c.listen == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert (c.port, c.quarantine) == (17355, 12.0)
    assert list(c.clusters) == ["shop", "plant"]
    assert wf.secrets["shop"] == (tmp_path / "shop.key").read_bytes().strip()
    assert len(wf.secrets["plant"]) == 64
    assert wf.secrets["shop"].decode() not in repr(wf)


def test_defaults(tmp_path: Path) -> None:
    wf = load_witness(write(tmp_path, "clusters:\n  shop:\n    secret_file: shop.key\n"))
    assert wf.config.listen == (ipaddress.ip_address("0.0.0.0"),)
    assert (wf.config.port, wf.config.quarantine) == (7355, 10.0)


def test_config_is_frozen(tmp_path: Path) -> None:
    c = load_witness(write(tmp_path, GOOD)).config
    with pytest.raises(ValueError, match="frozen"):
        c.port = 1  # type: ignore[misc]


def test_unknown_top_level_key_names_line_and_allowed_keys(tmp_path: Path) -> None:
    text = GOOD + "ttl: 3\n"
    [msg] = issues(tmp_path, text)
    assert msg.startswith(f"{tmp_path}/witness.yaml:{line_of(text, 'ttl')}: ttl: unknown key")
    assert "listen, port, quarantine, clusters" in msg


def test_unknown_key_in_a_cluster(tmp_path: Path) -> None:
    text = GOOD.replace("    secret_file: shop.key", "    secret_file: shop.key\n    secret: x")
    [msg] = issues(tmp_path, text)
    line = line_of(text, "secret: x")
    assert msg == (
        f"{tmp_path}/witness.yaml:{line}: clusters.shop.secret: unknown key; "
        "expected one of: secret_file"
    )


@pytest.mark.parametrize(
    ("old", "new", "field", "value", "expected"),
    [
        ("port: 17355", "port: 70000", "port", "70000", "less than or equal to 65535"),
        ("port: 17355", "port: web", "port", "'web'", "expected a valid integer"),
        ("quarantine: 12", "quarantine: 0", "quarantine", "0", "greater than 0"),
        ("quarantine: 12", "quarantine: -3", "quarantine", "-3", "greater than 0"),
        ("[127.0.0.1, ", "[127.0.0.1, nope, ", "listen[1]", "'nope'", "IPv4 or IPv6 address"),
        ('listen: [127.0.0.1, "::1"]', "listen: []", "listen", "[]", "at least 1"),
    ],
)
def test_bad_values_are_located(
    tmp_path: Path, old: str, new: str, field: str, value: str, expected: str
) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    [msg] = issues(tmp_path, text)
    assert msg.startswith(f"{tmp_path}/witness.yaml:{line_of(text, new.split(':')[0])}: ")
    assert f": {field} = {value}: " in msg
    assert expected in msg


def test_duplicate_listen_address(tmp_path: Path) -> None:
    text = GOOD.replace('"::1"', "127.0.0.1")
    [msg] = issues(tmp_path, text)
    assert "listen[1] = 127.0.0.1: address already listed as listen[0]" in msg


def test_clusters_are_required(tmp_path: Path) -> None:
    [msg] = issues(tmp_path, "port: 7355\n")
    assert msg.endswith("clusters: required key is missing")
    [msg] = issues(tmp_path, "clusters: {}\n")
    assert "clusters = {}" in msg
    assert "at least 1" in msg


def test_bad_cluster_name_blames_the_key(tmp_path: Path) -> None:
    text = GOOD.replace("  plant:", "  9plant:")
    [msg] = issues(tmp_path, text)
    assert msg.startswith(f"{tmp_path}/witness.yaml:{line_of(text, '9plant')}: clusters")
    assert "expected a name" in msg


def test_missing_secret_file(tmp_path: Path) -> None:
    text = GOOD.replace("secret_file: shop.key", "secret_file: gone.key")
    [msg] = issues(tmp_path, text)
    assert msg == (
        f"{tmp_path}/witness.yaml:{line_of(text, 'gone.key')}: clusters.shop.secret_file = "
        f"{tmp_path}/gone.key: secret file not found; copy the cluster's cluster.key here "
        "(mode 0600)"
    )


def test_world_readable_secret(tmp_path: Path) -> None:
    [msg] = issues(tmp_path, GOOD, mode=0o644)
    assert f":{line_of(GOOD, 'shop.key')}: clusters.shop.secret_file = " in msg
    assert "accessible to other users (mode 0644); run `chmod 600" in msg


def test_short_secret(tmp_path: Path) -> None:
    [msg] = issues(tmp_path, GOOD, secret="short")
    assert "clusters.shop.secret_file" in msg
    assert "secret is 5 bytes long; expected at least 16" in msg


def test_every_secret_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("secret_file: shop.key", "secret_file: gone.key").replace(
        "{plant_key}", "gone-too.key"
    )
    msgs = issues(tmp_path, text)
    assert [m.split(": ")[1] for m in msgs] == [
        "clusters.shop.secret_file = " + str(tmp_path / "gone.key"),
        "clusters.plant.secret_file = " + str(tmp_path / "gone-too.key"),
    ]


def test_yaml_syntax_error_and_duplicate_key(tmp_path: Path) -> None:
    [msg] = issues(tmp_path, "port: [\n")
    assert "YAML syntax error" in msg
    text = GOOD + "port: 1\n"
    [msg] = issues(tmp_path, text)
    assert f":{len(text.splitlines())}: port: duplicate key" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"witness.yaml: file not found; write it as described"):
        load_witness(tmp_path / "witness.yaml")


def _hakit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAKIT_ETC": str(tmp_path), "HAKIT_VAR": str(tmp_path / "var")}
    return subprocess.run(
        [sys.executable, "-m", "hakit", "witness", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_witness_check_command(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    ok = _hakit(tmp_path, "check")
    assert ok.returncode == 0, ok.stderr
    assert "witness.yaml: OK — listening on 127.0.0.1, [::1] port 17355/udp" in ok.stdout
    assert "2 cluster(s): shop, plant" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 17355", "port: 0"))
    r = _hakit(tmp_path, "check", "--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}:2: port = 0: " in r.stderr
