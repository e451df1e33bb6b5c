"""Module templates: every shipped one renders into a module that loads, with its defaults and
with values given; a value never changes the module's structure; nothing half-written."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from hakit import templates
from hakit.cli.main import cli
from hakit.config.model import Cluster
from hakit.config.module import FarmModule, MirrorModule, load_module
from hakit.daemon.checkers import effective_checkers, service_checker_name
from hakit.errors import ConfigError, HakitError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = templates.names()


def cluster() -> Cluster:
    nodes = {"n1": "10.100.1.1", "n2": "10.100.1.2", "n3": "10.100.1.3"}
    return Cluster.model_validate(
        {
            "cluster": "c",
            "networks": {"lan": {}, "net2": {}},
            "nodes": {n: {"addresses": {"lan": a}} for n, a in nodes.items()},
        }
    )


def test_the_shipped_templates() -> None:
    expected = {"generic-mirror", "generic-farm", "postgresql", "nginx-farm", "apache-farm"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_renders_with_its_defaults_into_a_module_that_loads(tmp_path: Path, name: str) -> None:
    t = templates.load(name)
    folder = templates.render(name, "app", tmp_path, {}, cluster())
    m = load_module(folder, cluster())
    assert m.config.kind == t.spec.kind
    # the cluster decided the nodes (two for a mirror, all for a farm) and the network
    assert list(m.config.nodes) == (["n1", "n2"] if t.spec.kind == "mirror" else ["n1", "n2", "n3"])
    assert all(v.network == "lan" for v in m.config.vips)
    assert not (folder / templates.TEMPLATE_FILE).exists()
    for script in (t.folder / "bin").glob("*") if (t.folder / "bin").is_dir() else ():
        assert (folder / "bin" / script.name).stat().st_mode & 0o111, script
    # its page exists and is linked from the index of templates
    assert (ROOT / t.spec.doc).is_file(), t.spec.doc
    assert f"({Path(t.spec.doc).name})" in (ROOT / "docs/modules/README.md").read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_each_renders_without_a_cluster(tmp_path: Path, name: str) -> None:
    folder = templates.render(name, "app", tmp_path)
    load_module(folder, None)


def test_values_are_set_and_composed_defaults_follow_them(tmp_path: Path) -> None:
    given = {"PG_VERSION": "16", "PG_CLUSTER": "sales", "VIP": "10.100.1.99/24", "MODE": "semi"}
    folder = templates.render("postgresql", "db", tmp_path, given, cluster())
    c = load_module(folder, cluster()).config
    assert isinstance(c, MirrorModule)
    assert c.replication is not None
    assert c.replication.dirs[0].path == "/var/lib/postgresql/16/sales"
    assert c.replication.mode == "semi"
    assert str(c.vips[0].address) == "10.100.1.99/24"
    assert c.variables["PGDATA"] == "/var/lib/postgresql/16/sales"


def test_a_list_variable_and_chosen_nodes(tmp_path: Path) -> None:
    given = {"SERVICES": "redis-server, nginx", "NODES": "n3,n1", "PORT": "8080"}
    folder = templates.render("generic-farm", "web", tmp_path, given, cluster())
    c = load_module(folder, cluster()).config
    assert isinstance(c, FarmModule)
    assert c.services == ("redis-server", "nginx")
    assert c.nodes == ("n3", "n1")
    assert c.rules[0].port == 8080


def test_a_value_cannot_add_keys_to_the_module(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        templates.render(
            "nginx-farm", "web", tmp_path, {"VIP": "10.0.0.1/24, network: x}"}, cluster()
        )
    assert "web/module.yaml:" in str(e.value)
    assert "vips[0].address" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"FOO": "1"}, "has no variable FOO; its variables: NODES, NETWORK, VIP"),
        ({"MODE": "async"}, "does not match 'sync|semi'"),
        ({"VIP": "10.0.0.1/24\nkind: farm"}, "control characters"),
        ({"NODES": ",,"}, "node names separated by commas"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, given: dict[str, str], message: str) -> None:
    with pytest.raises(HakitError, match=message.replace("|", "\\|")):
        templates.render("postgresql", "db", tmp_path, given, cluster())
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "mine").write_text("keep")
    with pytest.raises(HakitError, match="already exists: nothing written"):
        templates.render("postgresql", "db", tmp_path, {}, cluster())
    assert (tmp_path / "db" / "mine").read_text() == "keep"


def test_unknown_template_and_bad_module_name(tmp_path: Path) -> None:
    with pytest.raises(HakitError, match="no template 'nope'; templates: apache-farm"):
        templates.render("nope", "db", tmp_path)
    with pytest.raises(HakitError, match="module name '1db'"):
        templates.render("postgresql", "1db", tmp_path)


def test_placeholders_must_be_whole_values_outside_comments() -> None:
    values: dict[str, str | list[str]] = {"A": "x y", "L": ["p", "q"]}
    text = "k: {{A}}  # about {{A}} and {{L}}\nl: [{{A}}, {{L}}]\n- {{A}}\n"
    assert templates.render_text(text, values, "f") == (
        'k: "x y"  # about x y and p, q\nl: ["x y", ["p", "q"]]\n- "x y"\n'
    )
    with pytest.raises(ConfigError) as e:
        templates.render_text("path: /srv/{{A}}/data\nk: {{B}}\n", values, "f")
    assert [str(i) for i in e.value.issues] == [
        "f:1: {{A}}: a placeholder must be a whole value",
        "f:2: {{B}}: no such variable",
    ]


def test_parse_sets() -> None:
    assert templates.parse_sets(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(HakitError, match="expected KEY=VALUE"):
        templates.parse_sets(["A"])
    with pytest.raises(HakitError, match="given twice"):
        templates.parse_sets(["A=1", "A=2"])


def test_the_build_packages_every_template(tmp_path: Path) -> None:
    written = templates.build_packages(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.hakit" for n in SHIPPED)
    with zipfile.ZipFile(tmp_path / "postgresql.hakit") as z:
        names = z.namelist()
    assert any(n.endswith("module.yaml") for n in names)
    assert any(n.endswith("bin/start_prim") for n in names)


def test_services_imply_one_checker_each_unless_the_module_has_it() -> None:
    folder_checkers = effective_checkers("farm", (), False, ("nginx", "postgresql@15-main"))
    assert [(c.name, getattr(c, "unit", None)) for c in folder_checkers] == [
        ("service-nginx", "nginx"),
        ("service-postgresql-15-main", "postgresql@15-main"),
    ]
    assert service_checker_name("a" * 40) == "service-" + "a" * 24


def test_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAKIT_ETC", str(tmp_path / "etc"))  # no cluster.yaml there
    r = CliRunner().invoke(
        cli, ["module", "new", "web", "-t", "nginx-farm", "--set", "PORT=8080", "-C", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    assert "checked alone" in r.output
    assert 'port: "8080"' in (tmp_path / "web" / "module.yaml").read_text()
    r = CliRunner().invoke(cli, ["module", "templates"])
    assert r.exit_code == 0
    assert "postgresql (mirror)" in r.output
    r = CliRunner().invoke(cli, ["module", "new", "web", "-t", "nginx-farm", "-C", str(tmp_path)])
    assert isinstance(r.exception, HakitError)
    assert "already exists" in str(r.exception)
