"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}: APIError, the 400 for an out-of-range
sampling value, and the handlers that give FastAPI's own errors (422, 404, 500) that shape too.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from utils.lm.generation import InvalidParam

# Request field -> the GenerationParams field it sets, for error messages that name what the client sent.
API_PARAM_NAMES = {"max_new_tokens": "max_tokens"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid_param_error(exc: InvalidParam) -> APIError:
    name = API_PARAM_NAMES.get(exc.param, exc.param)
    return APIError(400, f"{name} {exc.problem}", param=name, code="invalid_value")


def _validation_error(exc: RequestValidationError) -> APIError:
    problems, param = [], None
    for error in exc.errors():
        # JSON syntax errors locate by character offset, which is no field name
        location = [] if error.get("type") == "json_invalid" else [str(p) for p in error.get("loc", ()) if p != "body"]
        param = param or ".".join(location) or None
        problems.append(f"{'.'.join(location) or 'body'}: {error.get('msg')}")
    return APIError(422, "invalid request: " + "; ".join(problems), param=param)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def schema_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc).response()

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return APIError(exc.status_code, str(exc.detail), code=None).response()

    async def server_error(_: Request, exc: Exception) -> JSONResponse:  # Starlette then re-raises it to be logged
        return APIError(500, "internal server error; see the server log", "server_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, schema_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
