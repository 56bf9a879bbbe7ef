"""Errors the control plane raises; the API maps them to JSON bodies, the CLI to exit codes."""

from __future__ import annotations

from typing import Any


class ControlError(Exception):
    status = 400
    code = "bad_request"
    exit_code = 2

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class BadRequest(ControlError):
    pass


class Invalid(ControlError):
    status = 422
    code = "validation_error"


class Unauthorized(ControlError):
    status = 401
    code = "unauthorized"
    exit_code = 7


class Forbidden(ControlError):
    status = 403
    code = "forbidden"
    exit_code = 7


class NotFound(ControlError):
    status = 404
    code = "not_found"
    exit_code = 3


class Conflict(ControlError):
    status = 409
    code = "conflict"
    exit_code = 4
