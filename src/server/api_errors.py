"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI uses.

Handlers raise ``APIError`` (or a subclass); the app turns it into the JSON response, so a client (the official
``openai`` package, our ``openai_compatible`` provider) maps it to its own typed exception.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error answered to the client; never carries a traceback or a secret."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_supported(feature: str, param: str) -> APIError:
    return APIError(
        400,
        f"{feature} is not supported by this server (Hearth's local models generate plain text only).",
        param=param,
        code="unsupported_parameter",
    )


def model_not_found(model: str, available: list[str]) -> APIError:
    shown = ", ".join(available) or "none"
    return APIError(
        404,
        f"The model {model!r} does not exist or is not downloaded on this server. Available models: {shown}.",
        type=INVALID_REQUEST,
        param="model",
        code="model_not_found",
    )


def invalid_api_key() -> APIError:
    return APIError(
        401,
        "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY' (the key set with --api-key or "
        "HEARTH_SERVER_API_KEY).",
        type=INVALID_REQUEST,
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server accepts ({limit:,} bytes).", code="request_too_large")


def queue_full(waiting: int) -> APIError:
    return APIError(
        429,
        f"The server is busy: {waiting} request(s) are already waiting for the model. Retry in a moment.",
        type=RATE_LIMIT,
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def internal_error() -> APIError:
    return APIError(
        500,
        "The server had an internal error while processing the request; it has been logged.",
        type=SERVER_ERROR,
        code="internal_error",
    )
