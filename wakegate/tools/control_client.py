"""A client of the gateway's control API (router/control.py) for the command line.

The CLI validates nothing itself: it sends what it was given and shows the API's answer, so
that a command and an SDK call are refused with the same message naming the same field.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx


class ApiFailure(Exception):
    """The gateway answered with an error (its message and field, as the API gives them), or
    could not be reached (status 0)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def __str__(self) -> str:
        text = self.message
        # Validation messages start with the field ("config.minReplicas: must ..."); others
        # (a quota, a conflict) name it beside the message.
        if self.field and not text.startswith(self.field):
            text += f" (field: {self.field})"
        return text if self.status == 0 else f"{self.status}: {text}"


@dataclass(frozen=True)
class Events:
    """`/llms/{name}/events`: the deployment's status and the events of its current revision."""

    status: str
    events: list[dict[str, Any]]

    def first(self, *kinds: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("eventType") in kinds), None)


class ControlClient:
    """One connection pool to one gateway, as one tenant (the token's)."""

    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ApiFailure(0, f"cannot reach the gateway at {self.base_url}: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400:
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                field = data.get("field")
                raise ApiFailure(
                    resp.status_code, data["error"], field if isinstance(field, str) else None
                )
            raise ApiFailure(resp.status_code, resp.text[:300] or resp.reason_phrase)
        return data

    def list(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v2/deployments")["data"])

    def get(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v2/deployments/{name}")["data"])

    def create(
        self, name: str, config: dict[str, Any], description: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "config": config}
        if description is not None:
            body["description"] = description
        return dict(self._call("POST", "/v2/deployments", body)["data"])

    def update(
        self, name: str, config: dict[str, Any] | None, description: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if config:
            body["config"] = config
        if description is not None:
            body["description"] = description
        return dict(self._call("PUT", f"/v2/deployments/{name}", body)["data"])

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/v2/deployments/{name}")

    def events(self, name: str) -> Events:
        data = self._call("GET", f"/llms/{name}/events")
        return Events(str(data.get("deploymentStatus", "")), list(data.get("ComputeEvents") or []))

    def accelerators(self) -> dict[str, Any]:
        """The pool as the scaler last reported it (`GET /v2/accelerators`)."""
        return dict(self._call("GET", "/v2/accelerators")["data"])

    def tenant(self) -> str:
        """The short code of the token's tenant."""
        return str(self._call("GET", "/users/current")["tenant"]["shortCode"])
