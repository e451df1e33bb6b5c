"""A real local HTTP server that replays the Azure and GCP REST APIs a VIP mover uses.

Its answers are the documented responses in `fixtures/` (written from the public API
references: Azure Network `networkInterfaces` 2023-09-01 and its `Azure-AsyncOperation`, the
App Service managed-identity token endpoint; Compute Engine v1 `instances`, `routes`,
`zoneOperations`/`globalOperations`, and the OAuth token endpoint), filled with the objects of
the test, and it enforces the contract the docs state: the bearer token it issued, the
api-version, `If-Match` etags and `fingerprint`s (412 when stale), one holder per address.
Every request is recorded (`log`). `fail(status, fixture)` answers every request with that
error; `hang()` holds every request unanswered until `close()`.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures"
Answer = tuple[int, Any, dict[str, str]]


def fixture(file: str, /, **values: str) -> Any:
    text = (FIXTURES / file).read_text()
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    data = json.loads(text)
    data.pop("_source", None)
    return data


class Replay:
    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.log: list[tuple[str, str]] = []
        self.failure: tuple[int, str] | None = None
        self._hang = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                replay._serve(self)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, status: int, name: str, **values: str) -> None:
        self.failure = (status, json.dumps(fixture(name, **values)))

    def hang(self) -> None:
        self._hang.set()

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    # -- dispatch ---------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> Answer:
        raise NotImplementedError

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        self.log.append((h.command, parts.path))
        if self._hang.is_set():
            self._released.wait(60)
            return
        if self.failure is not None and not self.is_token(parts.path):
            status, text = self.failure
            self._reply(h, status, text.encode(), {})
            return
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if (
            not self.is_token(parts.path)
            and h.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            self._reply(
                h,
                401,
                json.dumps(
                    {
                        "error": {
                            "code": "InvalidAuthenticationToken",
                            "message": "no or wrong bearer token",
                        }
                    }
                ).encode(),
                {},
            )
            return
        with self._lock:
            status, data, extra = self.handle(h.command, parts.path, query, body, h.headers)
        self._reply(h, status, b"" if data is None else json.dumps(data).encode(), extra)

    def is_token(self, path: str) -> bool:
        return path.endswith("/token")

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, data: bytes, extra: dict[str, str]) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def azure_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class AzureReplay(Replay):
    """Azure Resource Manager: NICs of one resource group, their async operations, and an App
    Service managed-identity token endpoint at `/msi/token`."""

    API = "2023-09-01"

    def __init__(self, subscription: str, group: str, nics: dict[str, str]) -> None:
        super().__init__()
        self.prefix = (
            f"/subscriptions/{subscription}/resourceGroups/{group}"
            "/providers/Microsoft.Network/networkInterfaces/"
        )
        self.header = secrets.token_hex(8)
        self.nics = {
            nic: fixture(
                "azure/nic.json",
                nic=nic,
                subscription=subscription,
                group=group,
                address=addr,
                vm=f"vm-{nic}",
            )
            for nic, addr in nics.items()
        }
        self.ops: dict[str, int] = {}
        self._etags = itertools.count(2)

    def addresses(self, nic: str) -> list[str]:
        return [
            c["properties"]["privateIPAddress"]
            for c in self.nics[nic]["properties"]["ipConfigurations"]
        ]

    def handle(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> Answer:
        if path == "/msi/token":
            if headers.get("X-IDENTITY-HEADER") != self.header:
                return 400, azure_error("BadRequest", "wrong identity header"), {}
            expires = str(int(time.time()) + 3600)
            token = fixture(
                "azure/token.json",
                token=self.token,
                expires_on=expires,
                resource=query.get("resource", ""),
            )
            return 200, token, {}
        if path.startswith("/operations/"):
            left = self.ops.get(path, 0)
            self.ops[path] = max(0, left - 1)
            return (
                200,
                fixture("azure/async-inprogress.json" if left else "azure/async-succeeded.json"),
                {},
            )
        if query.get("api-version") != self.API:
            return 400, azure_error("InvalidApiVersionParameter", "api-version"), {}
        if not path.startswith(self.prefix):
            return 404, azure_error("ResourceNotFound", path), {}
        nic = path[len(self.prefix) :]
        doc = self.nics.get(nic)
        if doc is None:
            return 404, azure_error("NotFound", f"Resource {nic} not found"), {}
        if method == "GET":
            return 200, doc, {}
        if method != "PUT":
            return 405, azure_error("MethodNotAllowed", method), {}
        if headers.get("If-Match") != doc["etag"]:
            return 412, azure_error("PreconditionFailed", "etag does not match"), {}
        configs = (body or {}).get("properties", {}).get("ipConfigurations")
        if not isinstance(configs, list) or not configs:
            return 400, azure_error("InvalidRequestFormat", "ipConfigurations"), {}
        for c in configs:
            props = c.get("properties") or {}
            if not c.get("name") or "subnet" not in props or not props.get("privateIPAddress"):
                return 400, azure_error("InvalidRequestFormat", "ipConfiguration"), {}
            ip = props["privateIPAddress"]
            for other in self.nics:
                if other != nic and ip in self.addresses(other):
                    return (
                        400,
                        azure_error(
                            "PrivateIPAddressInUse",
                            f"IP configuration {c['name']} is using the private IP "
                            f"address {ip} which is already allocated to "
                            f"resource {other}.",
                        ),
                        {},
                    )
        etag = f'W/"00000000-0000-0000-0000-{next(self._etags):012d}"'
        doc["etag"] = etag
        doc["properties"]["ipConfigurations"] = [
            {**c, "etag": etag, "properties": {**c["properties"], "provisioningState": "Succeeded"}}
            for c in configs
        ]
        op = f"/operations/{secrets.token_hex(6)}"
        self.ops[op] = 1  # InProgress once, then Succeeded
        answer = {**doc, "properties": {**doc["properties"], "provisioningState": "Updating"}}
        return 200, answer, {"Azure-AsyncOperation": self.url + op + f"?api-version={self.API}"}


class GcpReplay(Replay):
    """Compute Engine v1: instances, routes and operations of one project, and the OAuth token
    endpoint at `/token`."""

    def __init__(self, project: str, instances: dict[str, tuple[str, str]]) -> None:
        super().__init__()
        self.project = project
        self.instances = {
            (zone, name): fixture(
                "gcp/instance.json",
                instance=name,
                project=project,
                zone=zone,
                address=addr,
                fingerprint=secrets.token_urlsafe(8),
            )
            for name, (zone, addr) in instances.items()
        }
        self.routes: dict[str, Any] = {}
        self._ops = itertools.count(1)

    def aliases(self, zone: str, name: str) -> list[str]:
        nic = self.instances[(zone, name)]["networkInterfaces"][0]
        return [r["ipCidrRange"] for r in nic.get("aliasIpRanges", [])]

    def _op(self, kind: str, target: str, scope: str) -> Any:
        name = f"operation-{next(self._ops)}"
        return fixture(
            "gcp/operation.json",
            name=name,
            type=kind,
            target=target,
            status="RUNNING",
            self=f"{scope}/operations/{name}",
        )

    def handle(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> Answer:
        if path == "/token":
            if (body or {}).get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return 400, {"error": "invalid_grant"}, {}
            return 200, fixture("gcp/token.json", token=self.token), {}
        base = f"/projects/{self.project}/"
        if not path.startswith(base):
            return 404, gerror(404, "notFound", path), {}
        rest = path[len(base) :].split("/")
        if rest[-1] == "wait" and "operations" in rest:
            op = fixture(
                "gcp/operation.json", name=rest[-2], type="wait", target="", status="DONE", self=""
            )
            return 200, op, {}
        if rest[0] == "zones" and len(rest) >= 4 and rest[2] == "instances":
            key = (rest[1], rest[3])
            doc = self.instances.get(key)
            if doc is None:
                return 404, gerror(404, "notFound", f"instance {rest[3]}"), {}
            if method == "GET" and len(rest) == 4:
                return 200, doc, {}
            if method == "PATCH" and rest[4:] == ["updateNetworkInterface"]:
                nic = doc["networkInterfaces"][0]
                if query.get("networkInterface") != nic["name"]:
                    return 400, gerror(400, "invalid", "networkInterface"), {}
                if (body or {}).get("fingerprint") != nic["fingerprint"]:
                    return 412, gerror(412, "conditionNotMet", "fingerprint"), {}
                ranges = body.get("aliasIpRanges")
                if not isinstance(ranges, list):
                    return 400, gerror(400, "invalid", "aliasIpRanges"), {}
                for r in ranges:
                    cidr = str(r.get("ipCidrRange", ""))
                    norm = cidr if "/" in cidr else cidr + "/32"
                    for other in self.instances:
                        if other != key and norm in self.aliases(*other):
                            return 400, gerror(400, "invalid", f"{norm} is used by {other[1]}"), {}
                    r["ipCidrRange"] = norm
                nic["aliasIpRanges"] = ranges
                nic["fingerprint"] = secrets.token_urlsafe(8)
                return (
                    200,
                    self._op("updateNetworkInterface", doc["selfLink"], f"zones/{key[0]}"),
                    {},
                )
        if rest[:2] == ["global", "routes"]:
            if method == "POST" and len(rest) == 2:
                name = str((body or {}).get("name"))
                if name in self.routes:
                    return 409, gerror(409, "alreadyExists", f"route {name}"), {}
                hop = str(body.get("nextHopInstance", ""))
                hop = hop[hop.index("zones/") :] if "zones/" in hop else hop
                network = str(body.get("network", "")).rsplit("/", 1)[-1]
                self.routes[name] = fixture(
                    "gcp/route.json",
                    name=name,
                    project=self.project,
                    network=network,
                    dest=body.get("destRange", ""),
                    hop=hop,
                )
                return 200, self._op("insert", name, "global"), {}
            if len(rest) == 3:
                route = self.routes.get(rest[2])
                if route is None:
                    return 404, gerror(404, "notFound", f"route {rest[2]}"), {}
                if method == "GET":
                    return 200, route, {}
                if method == "DELETE":
                    del self.routes[rest[2]]
                    return 200, self._op("delete", rest[2], "global"), {}
        return 404, gerror(404, "notFound", path), {}


def gerror(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }


Factory = Callable[[], Replay]
