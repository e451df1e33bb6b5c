"""The web console as a person uses it: Debian's Chromium driven by Playwright, against the
console serving a real lab cluster.

The lab `cw1` has two nodes and one client; the console runs on the client (its own state
folder, HTTPS with its self-signed certificate) and Chromium runs in the client's network
namespace too (the lab's addresses exist only there). The one lab cluster is registered
twice, as `paris` (through node1 first, by the CLI) and `lyon` (through node2 first, from the
page): two labs are separate networks that one console process could not reach both of, and a
second cluster in the same lab would double the daemons on this 2-core machine. The tests
save the screenshots of docs/console.md into docs/console/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hakit.daemon.packages import package_bytes
from hakit.lab.lab import Lab, alive_pid
from hakit.waiting import WaitTimeout, wait_until
from tests.lab.modules import lab_up

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not shutil.which("nft"), reason="the lab needs nftables (nft)"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]

LAB = os.environ.get("HAKIT_CONSOLE_LAB", "cw1")  # another name when two runs share a machine
PORT = 7380
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "hakit" / "examples" / "mirror-web"
PASSWORDS = {"alice": "alice-password", "bob": "bob-password"}
UI_WAIT = 30_000  # ms


@dataclass
class Env:
    lab: Lab
    url: str
    state: Path  # the console's state folder, seen from this machine
    log: Path
    chromium: Path  # runs Debian's chromium in the client's network namespace
    token: str
    ca: str


def _unix(lab: Lab, node: str) -> httpx.Client:
    sock = lab.host_path(node, "/var/lib/hakit/hakit.sock")
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://hakit")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("console")
    with lab_up(LAB, 2, 1, 1) as lab:
        out = lab.exec(
            "node1",
            ["hakit", "token", "create", "console", "--role", "admin", "--json"],
            capture=True,
        )
        made = json.loads(out.stdout)
        token, ca = made["token"], made["ca_fingerprint"]
        for user, role in (("alice", "admin"), ("bob", "monitor")):
            lab.exec(
                "client1",
                ["hakit", "console", "user", "add", user, "--role", role, "--password-stdin"],
                input=PASSWORDS[user] + "\n",
            )
        n1, n2 = lab.address("node1"), lab.address("node2")
        for name, nodes in (("paris", f"{n1},{n2}"),):  # lyon: from the page, by the test
            lab.exec(
                "client1",
                [
                    *("hakit", "console", "cluster", "add", name, "--nodes", nodes),
                    "--token",
                    token,
                    "--ca",
                    ca,
                ],
            )
        address = lab.address("client1")
        log = tmp / "console.log"
        pid = lab.spawn(
            "client1", ["hakit", "console", "serve", "--listen", f"{address}:{PORT}"], log=log
        )
        try:
            wait_until(lambda: "hakit console: https://" in log.read_text(), 15, "console up")
            netns = lab.describe()["hosts"]["client1"]["netns"]
            chromium = tmp / "chromium"
            chromium.write_text(
                f'#!/bin/sh\nexec nsenter --net=/run/netns/{netns} {CHROMIUM} "$@"\n'
            )
            chromium.chmod(0o755)
            yield Env(
                lab,
                f"https://{address}:{PORT}",
                lab.host_path("client1", "/var/lib/hakit/console"),
                log,
                chromium,
                token,
                ca,
            )
        finally:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not alive_pid(pid), 10, "console stopped")
            except Exception:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(env: Env) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(env.chromium), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _page(browser: Any, env: Env, user: str | None, **ctx: Any) -> Any:
    context = browser.new_context(
        ignore_https_errors=True,
        viewport=ctx.pop("viewport", {"width": 1280, "height": 900}),
        **ctx,
    )
    page = context.new_page()
    page.set_default_timeout(UI_WAIT)
    page.goto(env.url + "/")
    if user is not None:
        page.fill("#user", user)
        page.fill("#password", PASSWORDS[user])
        page.click("button[type=submit]")
        _see(page, "#live.on")
    return page


def _see(page: Any, selector: str) -> Any:
    """Wait for `selector`; on a timeout, fail with what the page shows instead."""
    try:
        return page.wait_for_selector(selector)
    except playwright.TimeoutError:
        shown = page.inner_text("body")
        raise AssertionError(f"not shown: {selector}; the page shows:\n{shown[:3000]}") from None


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _chip(page: Any, node: str) -> Any:
    return page.locator(f"section[data-node={node}] h2 .state")


def _act(page: Any, node: str, command: str) -> str:
    """Click COMMAND on NODE's card, confirm; the explanation the dialog showed."""
    page.click(f"section[data-node={node}] button[data-action={command}]")
    text = str(page.inner_text("#confirm-text"))
    page.click("#confirm-ok")
    _see(page, f"#flash:has-text('{command} on {node}: accepted')")
    return text


def _package(tmp: Path, broken: bool = False) -> Path:
    folder = tmp / ("broken" if broken else "web")
    shutil.copytree(EXAMPLE, folder)
    if broken:
        text = (folder / "module.yaml").read_text().replace("failover: true", "failovr: true")
        (folder / "module.yaml").write_text(text)
    out = tmp / f"{folder.name}.hakit"
    out.write_bytes(package_bytes(folder))
    return out


def test_login_install_failover_swap_checker(env: Env, browser: Any, tmp_path: Path) -> None:
    """An admin logs in, registers a second cluster from the page, sees both, installs a
    module from a package (a broken one first: its errors inline with file:line), starts it,
    watches a power cut of the primary fail it over live, swaps back once the node returns,
    and switches a checker off; the cluster's audit records every action as done on behalf
    of the console's user."""
    page = _page(browser, env, None)
    _shot(page, "login")
    page.fill("#user", "alice")
    page.fill("#password", PASSWORDS["alice"])
    page.click("button[type=submit]")
    _see(page, "[data-cluster=paris] table")

    # the same cluster registered again from the page, reached through node2 first
    page.goto(env.url + "/#/admin")
    page.fill("#reg-name", "lyon")
    page.fill("#reg-nodes", f"{env.lab.address('node2')},{env.lab.address('node1')}")
    page.fill("#reg-token", env.token)
    page.fill("#reg-ca", env.ca)
    page.click("form[aria-label='register a cluster'] button[type=submit]")
    _see(page, "#flash:has-text('cluster lyon registered')")
    page.goto(env.url + "/#/")
    _see(page, "[data-cluster=lyon] table")
    page.goto(env.url + "/#/admin")
    page.select_option("#inst-cluster", "paris")
    page.fill("#inst-name", "web")
    page.set_input_files("#inst-file", str(_package(tmp_path, broken=True)))
    page.click("form[aria-label='install a module'] button[type=submit]")
    problems = _see(page, "pre.problems").inner_text()
    assert "module.yaml:" in problems, problems
    assert "failovr" in problems, problems
    _shot(page, "install-errors")
    page.set_input_files("#inst-file", str(_package(tmp_path)))
    page.click("form[aria-label='install a module'] button[type=submit]")
    _see(page, "#inst-result:has-text('node2: installed')")
    _see(page, "#inst-result:has-text('node1: installed')")

    page.goto(env.url + "/#/")
    _see(page, "[data-cluster=lyon] tr[data-module=web]")
    page.goto(env.url + "/#/c/paris/m/web")
    assert "primary" in _act(page, "node1", "prim")
    _act(page, "node2", "second")
    _see(page, "section[data-node=node1] h2 .state:has-text('PRIM ready')")
    _see(page, "section[data-node=node2] h2 .state:has-text('SECOND ready')")
    # the scripts' outputs of each node, read from the page
    page.click("section[aria-label='script outputs'] button:has-text('Refresh')")
    page.click(".scripts[data-node=node1] button[data-script*=start_prim]")
    _see(page, "pre.script-output")
    page.click("section[data-node=node1] button[data-action=stop]")
    assert page.inner_text("#confirm-text") == (
        "stop on the primary: node2 will take over (it is an up-to-date secondary)"
    )
    page.click("#confirm button[value=cancel]")
    _see(page, "section[aria-label=configuration] pre.file:has-text('kind: mirror')")
    _shot(page, "module")

    # the primary loses power: the page shows the failover live, through the other node
    env.lab.poweroff("node1")
    _see(page, "section[data-node=node2] h2 .state:has-text('ALONE ready')")
    page.goto(env.url + "/#/")
    _see(page, "[data-cluster=paris] tr[data-module=web] td[data-node=node2]:has-text('ALONE')")
    assert page.locator("[data-cluster=paris] p.error").count() == 0  # not blinded
    _shot(page, "overview-failover")

    env.lab.poweron("node1")
    page.goto(env.url + "/#/c/paris/m/web")
    # node1 rejoins by itself (boot: auto resumes a module that ran); only if it stays
    # stopped does the operator start it (a STOP seen while its daemon starts is transient)
    try:
        wait_until(lambda: _chip(page, "node1").inner_text() == "SECOND ready", 45, "node1")
    except WaitTimeout:
        assert _chip(page, "node1").inner_text().startswith("STOP"), _chip(page, "node1")
        _act(page, "node1", "start")
    _see(page, "section[data-node=node1] h2 .state:has-text('SECOND ready')")
    assert "node1 primary" in _act(page, "node2", "swap")
    _see(page, "section[data-node=node1] h2 .state:has-text('PRIM ready')")
    _see(page, "section[data-node=node2] h2 .state:has-text('SECOND ready')")

    page.click("tr[data-checker=vip] button[data-action='switch off']")
    page.click("#confirm-ok")
    _see(page, "h1 .badge:has-text('checker vip off')")
    _shot(page, "module-failover")

    # module.yaml edited in the page: checked (errors next to the editor), then refused by
    # the nodes where the module runs, each saying why
    page.goto(env.url + "/#/c/paris/m/web/edit")
    editor = _see(page, "textarea[data-file='module.yaml']")
    text = editor.input_value()
    editor.fill(text.replace("failover: true", "failovr: true"))
    page.click("button[data-action=check]")
    assert "failovr" in _see(page, "pre.inline-problems[data-file='module.yaml']").inner_text()
    _shot(page, "edit-errors")
    editor.fill(text.replace("start_timeout: 30", "start_timeout: 31"))
    page.click("button[data-action=apply]")
    page.click("#confirm-ok")
    _see(page, "#edit-result p.error[data-node=node1]:has-text('stop it first')")
    _see(page, "#edit-result p.error[data-node=node2]:has-text('stop it first')")

    # the audit trail of every node, the console's actions for alice
    page.goto(env.url + "/#/c/paris/audit")
    _see(page, "section[aria-label='audit records'] td.who:has-text('for alice')")
    _see(page, "section[aria-label='console journal'] li:has-text('logged in')")
    _shot(page, "audit")

    # an API token created (shown once, with the CA fingerprint), then revoked
    page.goto(env.url + "/#/c/paris/tokens")
    page.fill("#tok-name", "ci")
    page.select_option("#tok-role", "monitor")
    page.click("form[aria-label='create a token'] button[type=submit]")
    made = _see(page, "#made-token").inner_text()
    assert "hkt_" in made, made
    assert env.ca in made, made
    _shot(page, "tokens")
    token_id = made.split("hkt_")[1].split("_")[0]
    page.click(f"tr[data-token='{token_id}'] button[data-action=revoke]")
    page.click("#confirm-ok")
    _see(page, f"#flash:has-text('token {token_id} (ci) revoked')")

    with _unix(env.lab, "node2") as c:
        audit = c.get("/v1/audit").json()
    records = audit["records"] if isinstance(audit, dict) else audit
    swaps = [r for r in records if "swap" in json.dumps(r)]
    assert swaps, records
    assert all("alice" in json.dumps(r) for r in swaps), swaps


def test_monitor_sees_but_cannot_act(env: Env, browser: Any) -> None:
    """A monitor user sees everything, every action button is greyed with the reason, and the
    console refuses the action even when the page is bypassed."""
    page = _page(browser, env, "bob")
    page.goto(env.url + "/#/c/paris/m/web")
    stop = _see(page, "section[data-node=node1] button[data-action=stop]")
    assert stop.get_attribute("aria-disabled") == "true"
    assert "needs control" in (stop.get_attribute("title") or "")
    # aria-disabled (not disabled): it stays focusable and says why when pressed
    page.locator("section[data-node=node1] button[data-action=stop]").click(force=True)
    _see(page, "#flash.bad:has-text('your role monitor cannot do this')")
    assert not page.locator("#confirm").is_visible()
    _shot(page, "monitor")
    page.goto(env.url + "/#/c/paris/tokens")
    _see(page, "p.notice:has-text('API tokens need admin')")
    status, message = page.evaluate(
        """async () => {
            const me = await (await fetch('/api/me')).json();
            const r = await fetch('/api/clusters/paris/modules/web/command/stop?node=node1',
                {method: 'POST', headers: {'X-Hakit-CSRF': me.csrf}});
            return [r.status, (await r.json()).message];
        }"""
    )
    assert status == 403
    assert "needs control" in message
    no_csrf = page.evaluate(
        """async () => (await fetch('/api/clusters/paris/modules/web/command/stop?node=node1',
                {method: 'POST'})).status"""
    )
    assert no_csrf == 403
    phone = _page(browser, env, "bob", viewport={"width": 390, "height": 844})
    _see(phone, "[data-cluster=paris] tr[data-module=web]")
    _shot(phone, "phone")


def test_expired_session(env: Env, browser: Any) -> None:
    """A session older than its absolute lifetime ends: the next page asks to log in again."""
    page = _page(browser, env, "alice")
    sessions = env.state / "sessions.json"
    data = json.loads(sessions.read_text())
    old = {k: dict(v, created=v["created"] - 13 * 3600) for k, v in data.items()}
    tmp = sessions.with_name(".expired.tmp")
    tmp.write_text(json.dumps(old))
    os.chmod(tmp, 0o600)
    os.replace(tmp, sessions)
    page.reload()
    page.wait_for_url("**/login?why=expired")
    assert "expired" in page.inner_text("#why")
    assert page.evaluate("async () => (await fetch('/api/me')).status") == 401
    # the console's own log says who did what, never a password
    log = env.log.read_text()
    assert "alice (admin) logged in" in log
    assert PASSWORDS["alice"] not in log
