"""The CLI's client for the local daemon's API (HTTP over the daemon's unix socket)."""

from __future__ import annotations

from typing import Any

import httpx

from hakit.errors import DaemonUnavailable, HakitError
from hakit.paths import Paths

TIMEOUT = 5.0


class DaemonClient:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def _unavailable(self, why: str) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"the hakit daemon is not running on this node ({why} at {self.paths.socket}).\n"
            "Start it with `systemctl start hakit` (or `hakit daemon` in the foreground); "
            f"its log is {self.paths.daemon_log}."
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str) -> Any:
        """POST; a refusal (409) or an unknown module (404) is returned as its JSON body."""
        return self.request("POST", path, accept=(404, 409))

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        accept: tuple[int, ...] = (),
    ) -> Any:
        sock = self.paths.socket
        if not sock.exists():
            raise self._unavailable("no socket")
        transport = httpx.HTTPTransport(uds=str(sock))
        try:
            with httpx.Client(transport=transport, base_url="http://hakit", timeout=TIMEOUT) as c:
                r = c.request(method, "/v1" + path, params=params)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as e:
            raise self._unavailable(f"no answer: {e}") from None
        except httpx.TimeoutException:
            raise DaemonUnavailable(
                f"the hakit daemon did not answer within {TIMEOUT:g} s on {sock}; "
                f"see {self.paths.daemon_log}"
            ) from None
        if r.status_code in accept:
            body = r.json()
            if r.status_code == 404 and "detail" in body:
                raise HakitError(str(body["detail"]))
            return body
        r.raise_for_status()
        return r.json()
