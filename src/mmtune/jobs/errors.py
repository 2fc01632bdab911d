"""The one error type of the job service: what the API turns into an OpenAI error object."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error with an HTTP status and the fields of an OpenAI error object.

    `message` says what to change; `param` names the request field at fault (or None);
    `code` is a stable machine-readable string.
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, value: object, param: str | None = None) -> APIError:
    shown = value if isinstance(value, str) and len(value) <= 100 else f"{str(value)[:100]}…"
    return APIError(404, f"No such {kind}: {shown!r}", param=param, code=f"{kind}_not_found")
