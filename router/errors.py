"""Error responses. Each API family has its own body shape (wire-protocol spec 2.2, 8.6, 10.4);
the request-log download has the one its SDK method reads (`logs_body`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """Raised by handlers; rendered by the error middleware in the route family's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.error_type = error_type
        self.headers = headers or {}
        # More keys of the control-plane body (a refused quota's name and value); clients
        # ignore keys they do not know (wire-protocol spec 2.2).
        self.extra = extra or {}


def control_body(err: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": err.message}
    if err.field:
        body["field"] = err.field
    body.update(err.extra)
    return body


def logs_body(err: ApiError) -> dict[str, Any]:
    """The request-log download: the SDK's `download_request_logs` raises
    `RuntimeError(error.message)` for this shape (any other it answers with a bare HTTPError)."""
    body: dict[str, Any] = {"message": err.message}
    if err.field:
        body["field"] = err.field
    return {"error": body}


def lorax_body(err: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": err.message, "error_type": err.error_type or _lorax_type(err)}
    if err.field:
        body["field"] = err.field
    return body


def openai_body(err: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": err.error_type or _lorax_type(err),
            "param": err.field,
            "code": None,
        }
    }


def _lorax_type(err: ApiError) -> str:
    return {
        400: "validation",
        422: "validation",
        429: "overloaded",
        504: "timeout",
    }.get(err.status, "generation" if err.status >= 500 else "request")


def render(request: web.Request, err: ApiError) -> web.Response:
    family = request.get("wakegate.family", "control")
    if family == "openai":
        body = openai_body(err)
    elif family == "lorax":
        body = lorax_body(err)
    elif family == "logs":
        body = logs_body(err)
    else:
        body = control_body(err)
    return web.json_response(body, status=err.status, headers=err.headers)
