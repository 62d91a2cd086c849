"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

OpenAI's clients read this body: the Python client raises ``BadRequestError`` (400), ``AuthenticationError``
(401), ``NotFoundError`` (404), ``RateLimitError`` (429) with the message. Every error the server answers goes
through here, including FastAPI's own (validation, unknown routes, malformed JSON), so no client ever sees a
traceback or FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# OpenAI's error types by status.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """pydantic's first complaint as one sentence, and the field it concerns ("messages.0.role")."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "model_attributes_type" or not loc:
        return f"the request body must be a JSON object ({first.get('msg', 'invalid')})", None
    param = ".".join(loc)
    # A union (e.g. prompt: str | list[int]) names its branches in loc; the field alone says enough.
    return f"{param}: {first.get('msg', 'invalid value')}", param.split(".")[0]


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 429 else None
        return error_response(err.status, err.message, err.param, err.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/completions, "
                        "POST /v1/chat/completions",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
        return error_response(err.status_code, message, None, None, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its traceback on the server, one line to the client.
        log.exception("error serving %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(err).__name__}); the server keeps serving")
