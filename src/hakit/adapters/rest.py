"""A small JSON-over-HTTPS client for the clouds' REST APIs (Azure Resource Manager, Compute
Engine), on httpx: a bearer token from the cloud's credential library, a timeout on every
request, and the cloud's own error (code and message) in a `VipError` that names the call."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from hakit.adapters.vip import VipError


class NotFound(VipError):
    """The API answered 404 for the object asked for."""


class Rest:
    def __init__(self, cloud: str, token: Callable[[], str], timeout: float) -> None:
        self.cloud = cloud
        self.token = token
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(3.0, timeout)))

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        what: str,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, httpx.Headers]:
        """(the JSON answer or None, its headers); `VipError` for anything but a 2xx."""
        try:
            token = self.token()
        except VipError:
            raise
        except Exception as e:  # the credential library's own errors
            raise VipError(
                f"{self.cloud}: {what}: no credentials ({type(e).__name__}: {e}); see "
                "docs/cloud.md, Credentials"
            ) from e
        h = {"Authorization": f"Bearer {token}", **(headers or {})}
        try:
            r = self.client.request(method, url, params=params, json=body, headers=h)
        except httpx.TimeoutException as e:
            raise VipError(f"{self.cloud}: {what}: the API did not answer in time ({e})") from e
        except httpx.HTTPError as e:
            raise VipError(f"{self.cloud}: {what}: cannot reach {url}: {e}") from e
        data: Any = None
        if r.content:
            try:
                data = r.json()
            except ValueError:
                data = None
        if r.status_code >= 300:
            cls = NotFound if r.status_code == 404 else VipError
            raise cls(f"{self.cloud}: {what}: HTTP {r.status_code}: {error_of(data, r.text)}")
        return data, r.headers


def error_of(data: Any, text: str) -> str:
    """The cloud's error: Azure `{"error": {"code", "message"}}`, Google `{"error": {"code",
    "message", "status"}}`; else the start of the body."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("status") or err.get("code") or "error"
        return f"{code}: {err.get('message', '')}".strip()
    return text[:200] or "no body"


def poll(
    what: str,
    check: Callable[[], bool],
    interval: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Ask `check` until it says done (the caller's time bound ends it otherwise)."""
    for _ in range(100_000):
        if check():
            return
        sleep(interval)
    raise VipError(f"{what}: still not done")
