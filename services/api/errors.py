"""One JSON shape for every error: {"error": {"code", "message", "details"}}, never a bare 500."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from denorm.logs import get_logger
from services.api.responses import JSONBytes

log = get_logger("denorm.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: Any = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def response(self) -> JSONBytes:
        return error_response(self.status, self.code, self.message, self.details, self.retry_after)


RETRY_AFTER_S = 1  # what a 503 or a 429 tells the client to wait before trying again, unless it says


def error_response(
    status: int, code: str, message: str, details: Any = None, retry_after: int | None = None
) -> JSONBytes:
    wait = retry_after if retry_after is not None else RETRY_AFTER_S
    headers = {"Retry-After": str(wait)} if status in (429, 503) else None
    return JSONBytes(
        {"error": {"code": code, "message": message, "details": details}}, status_code=status, headers=headers
    )


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "unavailable",
}

# Documented on every route, so that the OpenAPI schema describes the errors clients can get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": name.replace("_", " ")}
    for code, name in _CODES.items()
    if code in (400, 401, 403, 404, 413, 422)
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONBytes:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONBytes:
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return error_response(422, "invalid_input", "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONBytes:
        return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONBytes:
        log.error("unhandled error", path=request.url.path, error=repr(exc))
        return error_response(500, "internal", "internal error")
