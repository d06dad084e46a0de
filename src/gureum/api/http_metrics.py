"""The service's own figures: requests by route and status, and how long they took.

Labelled by the route's template (``/v1/instances/{ref}``), never the path itself, so that the
number of series stays bounded whatever paths callers make up (an unknown path is "unmatched").
One set for the process, whichever listener (unix socket, TCP) took the request.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUESTS = Counter(
    "gureum_http_requests",
    "API requests answered, by method, route and status.",
    ["method", "route", "status"],
    registry=None,
)
LATENCY = Histogram(
    "gureum_http_request_duration_seconds",
    "Time to answer an API request (its headers; a stream's body is not counted).",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)


def collectors() -> list[Collector]:
    return [REQUESTS, LATENCY]


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = answered = time.perf_counter()
        code = 500

        async def watch(message: Message) -> None:
            nonlocal code, answered
            if message["type"] == "http.response.start":
                code, answered = message["status"], time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            # Any method a client makes up is one series, not one per invention.
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(method, route, str(code)).inc()
            LATENCY.labels(method, route).observe(max(answered, began) - began)
