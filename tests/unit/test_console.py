"""The console's users, sessions, throttle, state files and web guards, without a cluster:
the application in-process (Starlette's test client), time moved by hand."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from hakit.console.app import Console, build_app
from hakit.console.clusters import Hub, Registry
from hakit.console.sessions import COOKIE, Sessions, Throttle
from hakit.console.store import ConsoleError, Store
from hakit.console.users import Users, allows

TOKEN = "hkt_abcdefghijkl_" + "x" * 43
CA = "sha256:" + "0" * 64
ORIGIN = {"Origin": "http://testserver"}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "console")


def test_roles_are_cumulative() -> None:
    assert allows("admin", "control")
    assert allows("control", "monitor")
    assert not allows("monitor", "control")
    assert not allows("control", "admin")
    assert not allows("nobody", "monitor")


def test_users_hash_verify_and_files_0600(store: Store) -> None:
    users = Users(store)
    users.add("alice", "admin", "correct horse")
    assert users.verify("alice", "correct horse") == "admin"
    assert users.verify("alice", "wrong horse!") is None
    assert users.verify("nobody", "correct horse") is None
    text = (store.root / "users.json").read_text()
    assert "correct horse" not in text
    assert "$argon2id$" in text
    assert stat.S_IMODE(os.stat(store.root / "users.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    with pytest.raises(ConsoleError, match="exists"):
        users.add("alice", "monitor", "another one")
    with pytest.raises(ConsoleError, match="too short"):
        users.add("bob", "monitor", "short")
    with pytest.raises(ConsoleError, match="unknown role"):
        users.add("bob", "root", "long enough")
    with pytest.raises(ConsoleError, match="invalid user name"):
        users.add("../x", "monitor", "long enough")
    users.passwd("alice", "new password", "control")
    assert users.verify("alice", "new password") == "control"
    users.remove("alice")
    assert users.all() == {}


def test_another_process_changes_are_seen(store: Store) -> None:
    """The CLI writes the files while the console runs: the console reads them again."""
    Users(store).add("alice", "admin", "correct horse")
    console_view = Users(Store(store.root))
    assert console_view.role("alice") == "admin"
    Users(store).passwd("alice", "correct horse", "monitor")
    assert console_view.role("alice") == "monitor"


def test_sessions_expire_idle_and_absolute(store: Store) -> None:
    clock = Clock()
    sessions = Sessions(store, clock, idle=60, absolute=300)
    sid, s = sessions.create("alice")
    assert sid not in (store.root / "sessions.json").read_text()  # only its digest is kept
    assert sessions.get(sid)[0] == s
    clock.t += 59
    assert sessions.get(sid)[0] is not None  # a request: the idle time starts again
    clock.t += 59
    assert sessions.get(sid)[0] is not None
    clock.t += 61
    assert sessions.get(sid) == (None, "expired")
    sid, _ = sessions.create("alice")
    for _ in range(6):
        clock.t += 50
        found, _why = sessions.get(sid)
    assert found is None  # 300 s after the login, active or not
    assert sessions.get("made-up")[0] is None


def test_throttle_per_address() -> None:
    clock = Clock()
    t = Throttle(clock, limit=3, window=60)
    for _ in range(3):
        assert t.wait("10.0.0.1") == 0
        t.failed("10.0.0.1")
    assert t.wait("10.0.0.1") == pytest.approx(60)
    assert t.wait("10.0.0.2") == 0
    clock.t += 61
    assert t.wait("10.0.0.1") == 0


def test_registry_checks_entries(store: Store) -> None:
    reg = Registry(store)
    reg.add("paris", ["10.0.0.1", "10.0.0.2"], TOKEN, CA)
    assert reg.all()["paris"]["nodes"] == ["10.0.0.1", "10.0.0.2"]
    assert stat.S_IMODE(os.stat(store.root / "clusters.json").st_mode) == 0o600
    with pytest.raises(ConsoleError, match="invalid token"):
        reg.add("lyon", ["10.0.0.1"], "secret", CA)
    with pytest.raises(ConsoleError, match="invalid CA"):
        reg.add("lyon", ["10.0.0.1"], TOKEN, "abc")
    with pytest.raises(ConsoleError, match="registered"):
        reg.add("paris", ["10.0.0.1"], TOKEN, CA)
    reg.remove("paris")
    with pytest.raises(ConsoleError, match="no cluster"):
        reg.remove("paris")


class WebClient:
    """The application in-process over httpx's ASGI transport, keeping its cookies."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies = httpx.Cookies()

    def request(
        self, method: str, path: str, follow_redirects: bool = True, **kw: Any
    ) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app),
                base_url="http://testserver",
                cookies=self.cookies,
                follow_redirects=follow_redirects,
            ) as c:
                r = await c.request(method, path, **kw)
                self.cookies = httpx.Cookies(c.cookies)
                return r

        return asyncio.run(go())

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)


@pytest.fixture
def web(store: Store) -> tuple[WebClient, Clock]:
    clock = Clock()
    users = Users(store)
    users.add("alice", "admin", "correct horse")
    users.add("bob", "monitor", "battery staple")
    registry = Registry(store)
    console = Console(
        users, Sessions(store, clock), registry, Hub(registry), secure=False, now=clock
    )
    return WebClient(build_app(console)), clock


def _login(client: WebClient, user: str, password: str) -> str:
    r = client.post(
        "/login",
        content=f"user={user}&password={password}",
        headers=ORIGIN,
        follow_redirects=False,
    )
    return str(r.headers["location"])


def test_login_session_csrf_and_logout(web: tuple[WebClient, Clock]) -> None:
    client, _clock = web
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert client.get("/api/me").status_code == 401
    assert _login(client, "alice", "wrong") == "/login?why=failed"
    assert _login(client, "alice", "correct horse") == "/"
    me = client.get("/api/me").json()
    assert me["role"] == "admin"
    r = client.get("/api/me")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    # a POST without the CSRF token, or from another origin, is refused
    body = '{"name": "paris", "nodes": "10.0.0.1", "token": "' + TOKEN + '", "ca": "' + CA + '"}'
    assert client.post("/api/registry", content=body, headers=ORIGIN).status_code == 403
    evil = {"Origin": "https://evil.example", "X-Hakit-CSRF": me["csrf"]}
    assert client.post("/api/registry", content=body, headers=evil).status_code == 403
    ok = client.post("/api/registry", content=body, headers={**ORIGIN, "X-Hakit-CSRF": me["csrf"]})
    assert ok.json()["ok"], ok.text
    client.post("/logout", headers=ORIGIN)
    assert client.get("/api/me").status_code == 401


def test_monitor_cannot_act(web: tuple[WebClient, Clock]) -> None:
    client, _ = web
    _login(client, "bob", "battery staple")
    csrf = client.get("/api/me").json()["csrf"]
    r = client.post(
        "/api/clusters/paris/modules/web/command/stop?node=node1",
        headers={**ORIGIN, "X-Hakit-CSRF": csrf},
    )
    assert r.status_code == 403
    assert "needs control" in r.json()["message"]


def test_login_throttled_and_session_expiry(web: tuple[WebClient, Clock]) -> None:
    client, clock = web
    for _ in range(5):
        assert _login(client, "alice", "guess") == "/login?why=failed"
    assert _login(client, "alice", "correct horse").startswith("/login?why=throttled")
    clock.t += 61
    assert _login(client, "alice", "correct horse") == "/"
    clock.t += 31 * 60  # idle for longer than 30 min
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?why=expired"
    assert client.get("/api/me").status_code == 401


def test_bodies_are_bounded_before_authentication(web: tuple[WebClient, Clock]) -> None:
    client, _ = web
    big = b"x" * (65 * 1024)
    r = client.post("/login", content=big, headers=ORIGIN)
    assert r.status_code == 413
    r = client.post("/api/clusters/paris/install?name=web", content=big, headers=ORIGIN)
    assert r.status_code == 413  # a package only from a live admin session
    cookie = client.cookies.get(COOKIE)
    assert cookie is None


# --- the console's routes beyond commands, against an in-process fake of two nodes ---------


class FakeNodes:
    """Two nodes' answers to the node API, each request recorded with its on-behalf-of user
    (what `ClusterClient` would send); `role` is the registered token's role."""

    def __init__(self, role: str = "admin") -> None:
        self.role = role
        self.calls: list[tuple[str, str, str, Any, str | None]] = []
        self.installed: dict[str, bytes] = {}
        self.running = {"node2"}  # the module runs on node2: it refuses an install there
        from hakit.daemon.packages import package_bytes

        self.package = package_bytes(EXAMPLES / "mirror-web")

    def factory(self, addresses: Any, token: str, ca: str, port: int) -> Any:
        return FakeClient(self, "node1" if addresses[0] == "10.0.0.1" else "node2")

    def answer(self, node: str, method: str, path: str, params: Any, body: bytes) -> Any:
        p = params or {}
        if path == "/v1/audit":
            return 200, [
                {"at": 10.0 if node == "node1" else 5.0, "node": node, "path": "/x", "who": {}}
            ]
        if path.startswith("/v1/tokens"):
            if self.role != "admin":
                return 403, {"detail": f"this token has the role {self.role}; this needs admin"}
            if method == "GET":
                return 200, {"tokens": [{"id": "abcdefghijkl", "name": "console"}]}
            if method == "POST":
                return 200, {"token": "hkt_x", "ca_fingerprint": CA, "message": "created"}
            return 200, {"message": "token abcdefghijkl (console) revoked"}
        if path == "/v1/modules/web/scripts":
            if "name" in p:
                return 200, "42"  # a text that happens to be JSON
            return 200, [{"name": "start_prim-1.log", "size": 3, "at": 1.0}]
        if path == "/v1/modules/web/package":
            return 200, self.package
        if path == "/v1/modules/check":
            if b"failovr" in _zip_text(body):
                return 409, {"ok": False, "problems": ["module.yaml:9: failovr: unknown field"]}
            return 200, {"ok": True, "message": "web: OK"}
        if path == "/v1/modules" and method == "POST":
            if node in self.running:
                return 400, {"detail": "web runs here: stop it first"}
            self.installed[node] = body
            return 200, {"installed": True, "message": "installed"}
        if path == "/v1/cluster":
            return 200, {"node": node, "config": {"cluster": "paris", "nodes": {}}}
        if path == "/v1/cluster/check":
            ok = b"bad" not in body
            return (200 if ok else 409), {"ok": ok, "problems": [] if ok else ["line 1: bad"]}
        if path == "/v1/cluster/apply":
            return 200, {"applied": True, "message": "taken live"}
        return 404, {"detail": "not found"}


def _zip_text(data: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return b"".join(z.read(n) for n in z.namelist())


class FakeClient:
    def __init__(self, nodes: FakeNodes, node: str) -> None:
        self.nodes = nodes
        self.node = node

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        params: dict[str, Any] | None = None,
        on_behalf_of: str | None = None,
    ) -> tuple[int, Any]:
        self.nodes.calls.append((self.node, method, path, params, on_behalf_of))
        status, answer = self.nodes.answer(self.node, method, path, params, body)
        return status, answer

    async def download(
        self, path: str, params: dict[str, Any] | None = None, on_behalf_of: str | None = None
    ) -> tuple[int, bytes]:
        status, answer = await self.request("GET", path, b"", params, on_behalf_of)
        return status, answer if isinstance(answer, bytes) else str(answer).encode()

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.request("GET", path, params=params))[1]

    def stream(self, path: str) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "hakit" / "examples"


def _managed(store: Store, role: str = "admin") -> tuple[WebClient, FakeNodes, str]:
    from hakit.console.clusters import Watched

    nodes = FakeNodes(role)
    users = Users(store)
    users.add("alice", "admin", "correct horse")
    users.add("bob", "monitor", "battery staple")
    registry = Registry(store)
    hub = Hub(registry, nodes.factory)
    entry = {"nodes": ["10.0.0.1", "10.0.0.2"], "token": TOKEN, "ca": CA, "port": 7351}
    hub.watched["paris"] = Watched(
        "paris", entry, addresses={"node1": ["10.0.0.1"], "node2": ["10.0.0.2"]}
    )
    console = Console(users, Sessions(store, Clock()), registry, hub, secure=False)
    client = WebClient(build_app(console))
    _login(client, "alice", "correct horse")
    return client, nodes, client.get("/api/me").json()["csrf"]


def test_audit_merged_by_time_and_journal(store: Store) -> None:
    client, nodes, _ = _managed(store)
    r = client.get("/api/clusters/paris/audit?limit=10&module=web&failed=true").json()
    assert [x["node"] for x in r["items"]] == ["node2", "node1"]  # oldest first
    assert all(c[3] == {"limit": 10, "module": "web", "failed": "true"} for c in nodes.calls)
    assert all(c[4] == "alice" for c in nodes.calls)  # on behalf of the console's user
    journal = client.get("/api/console/journal").json()["items"]
    assert [j["kind"] for j in journal] == ["login"]
    assert client.get("/api/clusters/paris/audit?limit=x").status_code == 400


def test_tokens_need_an_admin_token_and_say_so(store: Store) -> None:
    client, _, _csrf = _managed(store, role="control")
    r = client.get("/api/clusters/paris/tokens")
    assert r.status_code == 409
    assert "registered with an admin token" in r.json()["message"]
    assert "role control" in r.json()["message"]


def test_tokens_listed_created_revoked(store: Store) -> None:
    client, nodes, csrf = _managed(store)
    h = {**ORIGIN, "X-Hakit-CSRF": csrf}
    assert client.get("/api/clusters/paris/tokens").json()["tokens"][0]["id"] == "abcdefghijkl"
    made = client.post(
        "/api/clusters/paris/tokens", content='{"name": "ci", "role": "control"}', headers=h
    ).json()
    assert made["token"] == "hkt_x"
    assert made["ca_fingerprint"] == CA
    assert nodes.calls[-1][3] == {"name": "ci", "role": "control"}
    bad = client.post(
        "/api/clusters/paris/tokens", content='{"name": "ci", "role": "root"}', headers=h
    )
    assert bad.status_code == 400
    assert client.post("/api/clusters/paris/tokens/abcdefghijkl/revoke", headers=h).json()["ok"]
    assert client.post("/api/clusters/paris/tokens/..%2Fx/revoke", headers=h).status_code in (
        400,
        404,
    )
    assert (
        client.post("/api/clusters/paris/tokens", content="{}", headers=ORIGIN).status_code == 403
    )


def test_monitor_reads_but_does_not_configure(store: Store) -> None:
    client, _, _ = _managed(store)
    client.post("/logout", headers=ORIGIN)
    _login(client, "bob", "battery staple")
    csrf = client.get("/api/me").json()["csrf"]
    h = {**ORIGIN, "X-Hakit-CSRF": csrf}
    assert client.get("/api/clusters/paris/audit").status_code == 200
    assert client.get("/api/clusters/paris/tokens").status_code == 403
    assert client.get("/api/console/journal").status_code == 403
    r = client.post("/api/clusters/paris/modules/web/edit/apply", content="{}", headers=h)
    assert r.status_code == 403
    assert "needs admin" in r.json()["message"]
    assert (
        client.post("/api/clusters/paris/cluster/apply", content="{}", headers=h).status_code == 403
    )


def test_scripts_and_package(store: Store) -> None:
    client, nodes, _ = _managed(store)
    r = client.get("/api/clusters/paris/modules/web/scripts?node=node2").json()
    assert r["items"][0]["name"] == "start_prim-1.log"
    assert nodes.calls[-1][0] == "node2"
    r = client.get("/api/clusters/paris/modules/web/scripts?node=node1&name=start_prim-1.log")
    assert r.json()["text"] == "42"
    bad = client.get("/api/clusters/paris/modules/web/scripts?node=node1&name=../x")
    assert bad.status_code == 400
    pkg = client.get("/api/clusters/paris/modules/web/package")
    assert pkg.content == nodes.package
    assert 'filename="web.hakit"' in pkg.headers["content-disposition"]


def test_edit_checked_then_applied_per_node(store: Store) -> None:
    client, nodes, csrf = _managed(store)
    h = {**ORIGIN, "X-Hakit-CSRF": csrf}
    text = (EXAMPLES / "mirror-web" / "module.yaml").read_text()
    broken = '{"files": {"module.yaml": ' + _js(text.replace("failover:", "failovr:")) + "}}"
    r = client.post("/api/clusters/paris/modules/web/edit/check", content=broken, headers=h)
    assert r.status_code == 409
    assert r.json()["problems"] == ["module.yaml:9: failovr: unknown field"]
    edited = text.replace("start_timeout: 30", "start_timeout: 40")
    body = '{"files": {"module.yaml": ' + _js(edited) + "}}"
    assert client.post(
        "/api/clusters/paris/modules/web/edit/check", content=body, headers=h
    ).json()["ok"]
    r = client.post("/api/clusters/paris/modules/web/edit/apply", content=body, headers=h)
    assert r.status_code == 409  # node2 runs the module: its refusal is shown, node1 took it
    by_node = {x["node"]: x for x in r.json()["results"]}
    assert by_node["node1"]["ok"]
    assert "stop it first" in by_node["node2"]["message"]
    assert b"start_timeout: 40" in _zip_text(nodes.installed["node1"])
    assert _names_in(nodes.installed["node1"])["bin/start_prim"] & 0o111  # still executable
    installs = [c for c in nodes.calls if c[2] == "/v1/modules"]
    assert all(c[3] == {"name": "web", "force": "true"} and c[4] == "alice" for c in installs)
    bad_name = '{"files": {"../etc/passwd": "x"}}'
    r = client.post("/api/clusters/paris/modules/web/edit/check", content=bad_name, headers=h)
    assert r.status_code == 400
    assert "invalid file name" in r.json()["message"]


def _names_in(data: bytes) -> dict[str, int]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: (i.external_attr >> 16) & 0o777 for i in z.infolist()}


def _js(text: str) -> str:
    import json

    return json.dumps(text)


def test_cluster_config_and_templates(store: Store) -> None:
    client, nodes, csrf = _managed(store)
    h = {**ORIGIN, "X-Hakit-CSRF": csrf}
    got = client.get("/api/clusters/paris/cluster").json()
    assert "cluster: paris" in got["text"]
    r = client.post("/api/clusters/paris/cluster/check", content='{"text": "bad"}', headers=h)
    assert r.status_code == 409
    assert r.json()["problems"] == ["line 1: bad"]
    r = client.post(
        "/api/clusters/paris/cluster/apply",
        content='{"text": "x: 1", "nodes": ["node2"]}',
        headers=h,
    )
    assert r.json()["ok"]
    assert [x["node"] for x in r.json()["results"]] == ["node2"]
    r = client.post(
        "/api/clusters/paris/cluster/apply",
        content='{"text": "x: 1", "nodes": ["node9"]}',
        headers=h,
    )
    assert r.status_code == 400
    assert "no node 'node9'" in r.json()["message"]
    r = client.post(
        "/api/clusters/paris/cluster/apply", content='{"text": "x: 1", "nodes": []}', headers=h
    )
    assert r.status_code == 400
    assert "no node chosen" in r.json()["message"]  # not every node
    tpl = client.get("/api/templates").json()
    assert set(tpl) == {"mirror-web", "farm-web", "console-ha"}
    assert "kind: farm" in tpl["farm-web"]["module.yaml"]
    nodes.running = set()
    r = client.post(
        "/api/clusters/paris/create", content='{"name": "site", "template": "farm-web"}', headers=h
    )
    assert r.json()["ok"], r.text
    assert _names_in(nodes.installed["node2"])["bin/start_both"] & 0o111
    r = client.post(
        "/api/clusters/paris/create", content='{"name": "site", "template": "nope"}', headers=h
    )
    assert r.status_code == 400
    assert "unknown template" in r.json()["message"]


def test_edit_bodies_bounded_larger_for_admins_only(store: Store) -> None:
    client, _, csrf = _managed(store)
    h = {**ORIGIN, "X-Hakit-CSRF": csrf}
    big = '{"files": {"bin/start_prim": "' + "#" * (100 * 1024) + '"}, "nodes": ["node1"]}'
    r = client.post("/api/clusters/paris/modules/web/edit/check", content=big, headers=h)
    assert r.status_code == 200, r.text  # 100 KiB of edited files: over 64 KiB, allowed
    huge = "x" * (5 * 1024 * 1024)
    r = client.post("/api/clusters/paris/cluster/check", content=huge, headers=h)
    assert r.status_code == 413
    client.post("/logout", headers=ORIGIN)
    r = client.post("/api/clusters/paris/modules/web/edit/check", content=big, headers=ORIGIN)
    assert r.status_code == 413  # no live admin session: the small limit
