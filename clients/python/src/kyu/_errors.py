"""Exceptions: one per error code of the HTTP API, all under `KyuError`.

The server answers every error as ``{"error": {"code", "message"}}``; the
code picks the class, so callers can ``except kyu.NotFound`` instead of
reading status numbers.
"""

from __future__ import annotations

from typing import Any, Optional


class KyuError(Exception):
    """Anything kyu refused or could not do. ``code`` is the API's error code
    (``"transport"`` when the server could not be reached), ``status`` the
    HTTP status (0 without an answer)."""

    code = "error"

    def __init__(self, message: str, *, status: int = 0, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.status else self.message


class BadRequest(KyuError):
    """The request was not well-formed (400 ``bad_request``)."""

    code = "bad_request"


class Unauthorized(KyuError):
    """No valid token (401): give ``token=`` or set ``KYU_TOKEN``."""

    code = "unauthorized"


class Forbidden(KyuError):
    """The token's role may not make this call (403)."""

    code = "forbidden"


class NotFound(KyuError):
    """No such job, queue or schedule (404)."""

    code = "not_found"


class Conflict(KyuError):
    """The job is not in a state that allows this (409): a stale token, a
    finished job, a running job that cannot be deleted."""

    code = "conflict"


class TooLarge(KyuError):
    """A payload, result or request over the server's size limit (413)."""

    code = "too_large"


class Invalid(KyuError):
    """A field's value was refused (422); the message names the field."""

    code = "invalid"


class Unavailable(KyuError):
    """The server or its database is not available now (503)."""

    code = "unavailable"


class Timeout(KyuError):
    """A wait ended before the job finished."""

    code = "timeout"


class ServerError(KyuError):
    """The server failed (500); its log says why."""

    code = "internal"


class TransportError(KyuError):
    """The server could not be reached, or the connection broke."""

    code = "transport"


class LeaseLost(Exception):
    """This worker no longer owns the job (its lease expired or it was
    cancelled and taken back): the handler's writes end here. Raised into a
    handler by ``ctx.step``/``ctx.save_checkpoint``; the worker drops the
    attempt's outcome quietly, since another worker now owns the job."""


_BY_CODE: dict[str, type[KyuError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooLarge,
        Invalid,
        Unavailable,
        Timeout,
        ServerError,
    )
}
_BY_STATUS: dict[int, type[KyuError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Invalid,
    503: Unavailable,
}


def error_from(status: int, body: Any) -> KyuError:
    """The exception for an error answer, by its code, else by its status."""
    code: Optional[str] = None
    message = f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        if isinstance(err.get("message"), str):
            message = err["message"]
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or (ServerError if status >= 500 else KyuError)
    return cls(message, status=status, code=code)


def slot_error(answer: dict[str, Any]) -> Optional[KyuError]:
    """The error of one slot of a many-reports or many-heartbeats answer."""
    err = answer.get("error")
    if not isinstance(err, dict):
        return None
    code = str(err.get("code", "error"))
    cls = _BY_CODE.get(code, KyuError)
    return cls(str(err.get("message", code)), status=0, code=code)
