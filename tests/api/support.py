"""An HTTP client for the API tests: a key, JSON in and out, problem documents checked."""

from __future__ import annotations

from typing import Any

import requests


class Api:
    def __init__(self, base: str, key: str | None) -> None:
        self.base = base
        self.key = key
        self.session = requests.Session()

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if self.key is not None:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        return self.session.request(method, self.base + path, headers=headers, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        response = self.request(method, path, **kw)
        assert response.status_code < 300, f"{response.status_code}: {response.text}"
        return response.json() if response.content else None


def problem(response: requests.Response, status: int) -> str:
    """The one-line ``detail`` of a problem answer with this status."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"]
    detail = body["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def item(n: int, **overrides: Any) -> dict[str, Any]:
    """One bulk item: customer c{n} with subscription s{n}."""
    base = {
        "customer_id": f"c{n}",
        "name": f"Customer {n}",
        "phone": f"+1202555{n % 10000:04d}",
        "subscription_id": f"s{n}",
        "plan": "Fiber",
        "expires_on": "2030-01-31",
    }
    base.update(overrides)
    return base
