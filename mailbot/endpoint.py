"""The operator's HTTP endpoint (`[metrics] listen`): GET /metrics, /healthz, /readyz.

A few lines of HTTP/1.1 on asyncio's own server, on the daemon's event loop: each request is read with a
time limit, answered and closed. What it says comes from the daemon's callbacks; anything slow they do (the
database) runs on a database thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

log = logging.getLogger("mailbot.endpoint")
READ_TIMEOUT = 5.0
MAX_HEADER_LINES = 100
TEXT = "text/plain; charset=utf-8"
# The classic text format, which prometheus_client writes for names like ours and every Prometheus reads.
EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"

Check = Callable[[], Awaitable[str | None]]  # None when all is well, else the one-line reason


class Endpoint:
    def __init__(self, *, metrics: Callable[[], Awaitable[bytes]], healthy: Check, ready: Check) -> None:
        self.routes: dict[str, Callable[[], Awaitable[tuple[HTTPStatus, str, bytes]]]] = {
            "/metrics": self._metrics,
            "/healthz": lambda: self._probe(healthy),
            "/readyz": lambda: self._probe(ready),
        }
        self._metrics_text = metrics

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._serve, host, port)

    async def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        return HTTPStatus.OK, EXPOSITION, await self._metrics_text()

    @staticmethod
    async def _probe(check: Check) -> tuple[HTTPStatus, str, bytes]:
        reason = await check()
        if reason is None:
            return HTTPStatus.OK, TEXT, b"ok\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, TEXT, reason.replace("\n", " ").encode() + b"\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
            status, content_type, body = await self._answer(method, path)
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that says nothing, hangs up or sends junk gets no answer
        finally:
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[HTTPStatus, str, bytes]:
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            return HTTPStatus.NOT_FOUND, TEXT, b"not found: try /metrics, /healthz or /readyz\n"
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, TEXT, b"only GET and HEAD\n"
        try:
            return await route()
        except Exception as exc:  # a probe must answer, whatever broke
            log.exception("%s failed", path)
            return HTTPStatus.INTERNAL_SERVER_ERROR, TEXT, f"{type(exc).__name__}: {exc}\n".encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of the request line; the headers are read and ignored."""
    parts = (await reader.readline()).decode("latin-1").split()
    if len(parts) != 3:
        raise ValueError("not an HTTP request line")
    for _ in range(MAX_HEADER_LINES):
        if (await reader.readline()).strip() == b"":
            break
    return parts[0].upper(), parts[1]
