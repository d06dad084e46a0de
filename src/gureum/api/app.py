"""The FastAPI application and the server that runs it (unix socket, optionally TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gureum import __version__
from gureum.api import errors, tls
from gureum.api.auth import AnyUser, RateLimiter
from gureum.api.cluster_port import ClusterPort
from gureum.api.http_metrics import HttpMetricsMiddleware
from gureum.api.middleware import AuditMiddleware, AuthMiddleware, BodyLimitMiddleware
from gureum.api.routes import (
    backups,
    ec2,
    events,
    images,
    instances,
    keypairs,
    metrics,
    networks,
    operations,
    snapshots,
    system,
    tenancy,
    ui,
)
from gureum.api.sessions import Sessions
from gureum.config import Config
from gureum.errors import Conflict, InvalidInput
from gureum.service.core import Services

log = logging.getLogger(__name__)


def create_app(svc: Services, transport: str = "unix", sessions: Sessions | None = None) -> FastAPI:
    """The API. ``transport``: "unix" (the root-only local socket, where a request without a
    token is the administrator), "tcp" (a token or a console session on every request) or "ui"
    (the socket `gureum ui` tunnels a browser to: as tcp). ``sessions``: the console's, shared
    by every listener of the service (one is made if not given)."""
    app = FastAPI(
        title="gureum",
        version=__version__,
        description="Real virtual machines on one host: launch, control, exec, console.",
        # The schema and docs are served by our own routes, which require an identity too.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = svc
    app.state.transport = transport
    config = svc.config
    app.state.limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
    # rate_limit_per_s 0 turns rate limiting off, the users' buckets with the tokens'.
    user_rate = config.user_rate_limit_per_s if config.rate_limit_per_s > 0 else 0
    app.state.user_limiter = RateLimiter(user_rate, config.user_rate_limit_burst)
    app.state.unauthenticated_audit = RateLimiter(1, 60)  # per client address
    app.state.signin_limiter = RateLimiter(2, 10)  # console sign-ins with a token, per address
    app.state.sessions = sessions if sessions is not None else Sessions()
    app.state.ec2_terminated = {}  # instances terminated through EC2, shown as such an hour
    errors.install(app)
    for module in (
        instances, snapshots, backups, networks, operations, images, system, tenancy, keypairs,
        events, metrics, ui, ec2,
    ):  # fmt: skip
        app.include_router(module.router)

    # Every route says which role it needs (x-gureum-role): tests/unit/test_authz_matrix.py
    # refuses a route of the schema without one, and calls each as every role. (The check once
    # made here walked app.routes, where FastAPI no longer lists included routers' routes.)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: AnyUser) -> JSONResponse:
        return JSONResponse(app.openapi())

    # Outermost last: authentication first (it audits its own refusals), then the audit, then
    # the size limit (so that the audit records a 413 as the caller got it).
    app.add_middleware(BodyLimitMiddleware, limit=svc.config.max_request_bytes)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(AuthMiddleware)
    app.add_middleware(HttpMetricsMiddleware)  # outermost: counts and times every answer
    return app


def _root_only_socket(path: Path) -> socket.socket:
    """The admin socket, bound here with mode 0600 before anyone can connect. (Given a path,
    uvicorn would make it 0666; the home is crossable by VM users, so the mode must hold.)"""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def _tcp_socket(listen: str) -> socket.socket:
    """The TCP listener's socket, bound here (uvicorn would only log a taken address and exit
    mid-start); a failure is one line: what, where and why."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(
                f"cannot listen on {listen}: the address is already in use (another gureum or "
                "another program; stop it or set GUREUM_LISTEN to a free address)",
                code="address-in-use",
            ) from None
        raise InvalidInput(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


# On SIGTERM, requests in flight get this long to finish; then their connections are closed
# (an upload that never ends must not keep the service from stopping).
GRACE_S = 5


async def serve(config: Config) -> None:
    """Run the service until SIGINT/SIGTERM. VMs keep running after it stops."""
    # Everything the service and its QEMUs create (the API socket, disks, logs) is root's alone:
    # the unix socket is the root-only admin path.
    os.umask(0o077)
    # Every guest connection (metadata, forwards, consoles) is a descriptor: take all the
    # kernel allows rather than the default 1024 (the limits per guest keep it bounded).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The TCP address first: taken, the service stops before it touches anything (no socket,
    # no lock, no reconcile) and says so in one line.
    tcp = _tcp_socket(config.listen_tcp) if config.listen_tcp else None
    svc = Services.build(config)
    svc.lock_home()
    report = await svc.start()
    for kind, items in report.items():
        for item in items:
            log.info("reconcile at start: %s %s", kind, item)
    sessions = Sessions()  # the console's, whichever listener a browser comes through
    sock = config.socket_path
    admin_socket = _root_only_socket(sock)
    # `gureum ui` tunnels a browser here: an identity on every request, as over TCP.
    ui_socket = _root_only_socket(config.ui_socket_path)
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                create_app(svc, transport, sessions),
                fd=listener.fileno(),
                lifespan="off",
                log_level="warning",
                loop="asyncio",
                ws="websockets-sansio",
                timeout_graceful_shutdown=GRACE_S,
            )
        )
        for transport, listener in (("unix", admin_socket), ("ui", ui_socket))
    ]
    if config.listen_tcp and tcp is not None:
        host, _, port = config.listen_tcp.rpartition(":")
        cert, key, print_ = tls.ensure(config.tls_dir)
        log.info("TLS on %s, certificate fingerprint SHA256 %s", config.listen_tcp, print_)
        print(f"gureum TLS certificate fingerprint (SHA256): {print_}", flush=True)
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    create_app(svc, "tcp", sessions),
                    host=host or "127.0.0.1",
                    port=int(port),
                    ssl_certfile=str(cert),
                    ssl_keyfile=str(key),
                    lifespan="off",
                    log_level="warning",
                    loop="asyncio",
                    ws="websockets-sansio",
                    timeout_graceful_shutdown=GRACE_S,
                )
            )
        )
    for server in servers:
        # We handle signals ourselves, once for all servers: uvicorn's own capture would
        # replace the process's handlers per server and raise the signal again on its way out.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    cluster = (
        ClusterPort(
            svc.enrolment.ca,
            svc.enrolment,
            svc.images,
            svc.instances.lifecycle.host_event,
            svc.networks.caller_on,
        )
        if config.cluster_listen
        else None
    )
    if cluster is not None:
        host, _, port = config.cluster_listen.rpartition(":")
        await cluster.start(host or "127.0.0.1", int(port))
        log.info(
            "cluster port on %s (CA %s)", config.cluster_listen, svc.enrolment.ca.fingerprint()
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound: list[list[socket.socket] | None] = [None, None, [tcp] if tcp else None]
    tasks = [asyncio.create_task(s.serve(b)) for s, b in zip(servers, bound, strict=False)]
    log.info(
        "gureum %s serving on %s%s (accel %s)",
        __version__,
        sock,
        f" and {config.listen_tcp}" if config.listen_tcp else "",
        svc.host.accel.accel,
    )
    print(
        f"gureum is serving on {sock} (accel: {svc.host.accel.accel}: {svc.host.accel.reason})",
        flush=True,
    )
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.gather(*tasks, return_exceptions=True)
    if cluster is not None:
        await cluster.stop()
    await svc.stop()
    admin_socket.close()
    ui_socket.close()
    sock.unlink(missing_ok=True)
    config.ui_socket_path.unlink(missing_ok=True)
