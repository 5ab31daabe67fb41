"""Django HTTP middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from .request_id import clean_request_id, new_request_id, request_id_context


class RequestIdMiddleware:
    """Gives every request an id: the client's `X-Request-ID` if it is sane, else a new one.

    The id is set on the response's `X-Request-ID` header and on `request.request_id`; jobs sent while
    the request is handled carry it, and so do the worker's log lines for them. Put it near the top of
    MIDDLEWARE so other middleware sees the id too.
    """

    sync_capable = True
    async_capable = True
    header = "X-Request-ID"

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def _request_id(self, request: HttpRequest) -> str:
        request_id = clean_request_id(request.headers.get(self.header)) or new_request_id()
        request.request_id = request_id  # type: ignore[attr-defined]  # bgjob's documented addition to the request
        return request_id

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self._async:
            return self.__acall__(request)
        request_id = self._request_id(request)
        with request_id_context(request_id):
            response: HttpResponse = self.get_response(request)
        response.headers[self.header] = request_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        request_id = self._request_id(request)
        with request_id_context(request_id):
            response: HttpResponse = await self.get_response(request)
        response.headers[self.header] = request_id
        return response
