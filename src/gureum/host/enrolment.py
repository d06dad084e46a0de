"""A host agent joining the cluster and reporting to its control plane (issue 17, part 1).

Joining: ask the cluster port for its CA and check it against the token's fingerprint before
anything secret is sent (an address that answers is not yet the cluster), then send the token's
secret and a certificate request over TLS verified against that CA, and keep the certificate.
Its key never leaves the host. Reporting: a heartbeat over TLS with that certificate, the
control plane verified as the holder of the CA's ``control-plane`` certificate.

The agent's files are under ``GUREUM_HOME/agent/``: ``agent.key`` (0600), ``agent.pem``,
``ca.pem`` and ``cluster.json`` (the control plane's address and this host's name).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from gureum.errors import GureumError, Unauthenticated, Unavailable
from gureum.model.cluster import CONTROL_PLANE, JoinToken
from gureum.sys.pki import csr_pem, fingerprint, new_key_pem

TIMEOUT_S = 10.0
MAX_ANSWER = 1 << 20


def ask(address: str, request: dict[str, Any], ctx: ssl.SSLContext) -> dict[str, Any]:
    """One request to the cluster port; its answer (GureumError with the port's code if it
    refused)."""
    host, _, port = address.rpartition(":")
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname=CONTROL_PLANE) as tls,
        ):
            tls.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_ANSWER:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ssl.SSLCertVerificationError as exc:
        raise Unauthenticated(f"the cluster port at {address} is not the cluster's: {exc}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach the cluster port at {address}: {exc}") from exc
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unavailable(f"the cluster port at {address} gave no answer") from None
    if "error" in answer:
        error = answer["error"]
        raise GureumError(str(error.get("message")), code=str(error.get("code")))
    return dict(answer)


def _verifying(ca_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem)
    return ctx


def join(token_text: str, folder: Path) -> str:
    """Join the cluster the token names; the host's name. The files are kept in ``folder``."""
    token = JoinToken.parse(token_text.strip())
    first = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    first.check_hostname = False
    first.verify_mode = ssl.CERT_NONE  # only to fetch the CA, checked below by its fingerprint
    ca_pem = str(ask(token.control_plane, {"op": "ca"}, first).get("ca", ""))
    try:
        seen = fingerprint(ca_pem.encode())
    except ValueError:
        seen = ""
    if seen != token.ca:
        raise Unauthenticated(
            f"the cluster port at {token.control_plane} has another CA than the token names: "
            "a wrong address, or something in between; nothing was sent"
        )
    key = new_key_pem()
    request = {"op": "join", "secret": token.secret, "csr": csr_pem(key, token.host).decode()}
    answer = ask(token.control_plane, request, _verifying(ca_pem))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / "agent.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    (folder / "agent.pem").write_text(str(answer["cert"]))
    (folder / "ca.pem").write_text(ca_pem)
    cluster = {"control_plane": token.control_plane, "host": answer["host"]}
    (folder / "cluster.json").write_text(json.dumps(cluster))
    return str(answer["host"])


def joined(folder: Path) -> dict[str, str] | None:
    """The control plane's address and this host's name, if this agent has joined."""
    path = folder / "cluster.json"
    return dict(json.loads(path.read_text())) if path.exists() else None


def heartbeat(folder: Path, facts: dict[str, object]) -> dict[str, Any]:
    """Tell the control plane this host is alive and what it has."""
    cluster = joined(folder)
    if cluster is None:
        raise GureumError(f"this agent has not joined a cluster ({folder} has no cluster.json)")
    ctx = _verifying((folder / "ca.pem").read_text())
    ctx.load_cert_chain(str(folder / "agent.pem"), str(folder / "agent.key"))
    return ask(cluster["control_plane"], {"op": "heartbeat", "facts": facts}, ctx)
