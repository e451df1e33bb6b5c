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
