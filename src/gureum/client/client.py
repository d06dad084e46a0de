"""A Python client of the gureum API. The CLI and the integration tests both use it."""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect, unix_connect

from gureum.config import home_from_env

UNIX_BASE = "http://gureum"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ServiceDown(ApiError):
    """No service answers at ``where``: the CLI exits 5 (unreachable) for it, which a guest
    agent not there (also ``unavailable``) is not. ``said``: why, where the default (start
    the service) is not the way out, e.g. a remote being added."""

    def __init__(self, where: str, home: Path | None, said: str | None = None) -> None:
        how = "gureum serve" if home is None else f"GUREUM_HOME={home} gureum serve"
        super().__init__(
            0,
            "unavailable",
            said
            or f"the gureum service is not running at {where}.\n"
            f"Start it with `{how} &` (or `make demo` sets everything up).",
        )


def remotes_file(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("GUREUM_CONFIG"):
        return Path(env["GUREUM_CONFIG"])
    return Path(env.get("HOME", "/root")) / ".config" / "gureum" / "remotes.json"


def load_remotes(env: dict[str, str] | None = None) -> dict[str, Any]:
    path = remotes_file(env)
    if not path.exists():
        return {"remotes": {}, "current": None}
    return json.loads(path.read_text())


def save_remotes(data: dict[str, Any], env: dict[str, str] | None = None) -> None:
    path = remotes_file(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds tokens
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.rename(path)


@dataclass
class Endpoint:
    base_url: str
    socket: Path | None  # unix socket, or None for TCP
    token: str | None = None
    project: str | None = None
    cert_pem: str | None = None  # a pinned server certificate (remotes over TLS)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Endpoint:
        """Where the CLI talks: a remote (GUREUM_REMOTE or the current one), GUREUM_URL, or
        the local socket in GUREUM_HOME. GUREUM_TOKEN and GUREUM_PROJECT apply to all."""
        env = dict(os.environ) if env is None else env
        remotes = load_remotes(env)
        name = env.get("GUREUM_REMOTE") or (
            None if env.get("GUREUM_URL") or env.get("GUREUM_HOME") else remotes.get("current")
        )
        if name and name != "local":
            remote = remotes["remotes"].get(name)
            if remote is None:
                raise ApiError(
                    0, "not-found", f"no remote named {name!r} (see `gureum remote list`)"
                )
            endpoint = cls(
                remote["url"].rstrip("/"), None, remote.get("token"), None, remote.get("cert")
            )
        elif env.get("GUREUM_URL"):
            endpoint = cls(env["GUREUM_URL"].rstrip("/"), None)
        else:
            endpoint = cls(UNIX_BASE, home_from_env(env) / "gureum.sock")
        endpoint.token = env.get("GUREUM_TOKEN") or endpoint.token
        endpoint.project = env.get("GUREUM_PROJECT") or None
        return endpoint

    @property
    def where(self) -> str:
        return str(self.socket) if self.socket else self.base_url

    @property
    def ws_url(self) -> str:
        return ("ws" + self.base_url[4:]) if self.base_url.startswith("http") else self.base_url

    def headers(self) -> dict[str, str]:
        out = {}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        if self.project:
            out["X-Gureum-Project"] = self.project
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        """Trust exactly the pinned certificate (no CA, no host name: the certificate is the
        identity)."""
        if self.cert_pem is None:
            return None
        ctx = ssl.create_default_context(cadata=self.cert_pem)
        ctx.check_hostname = False
        return ctx


class Client:
    def __init__(self, endpoint: Endpoint | None = None, timeout: float = 120.0) -> None:
        self.endpoint = ep = endpoint or Endpoint.from_env()
        transport = httpx.HTTPTransport(uds=str(ep.socket)) if ep.socket else None
        verify: ssl.SSLContext | bool = ep.ssl_context() or True
        self.http = httpx.Client(
            base_url=ep.base_url,
            transport=transport,
            timeout=timeout,
            headers=ep.headers(),
            verify=verify,
        )

    def close(self) -> None:
        self.http.close()

    def _untrusted(self) -> ApiError:
        """The server's certificate failed the check: not the pinned one, or (GUREUM_URL, or a
        remote added without one) none is pinned and a gureum server's is self-signed."""
        where = self.endpoint.where
        if self.endpoint.cert_pem is not None:
            said = f"{where} presented a certificate other than the one pinned for it: refusing"
            return ApiError(0, "untrusted", said + " to talk to it")
        return ApiError(
            0,
            "untrusted",
            f"{where} presented a certificate that is not trusted here, and no certificate is "
            f"pinned for it (GUREUM_URL pins none). Pin it: `gureum remote add NAME {where} "
            "--token TOKEN --fingerprint SHA256` (the fingerprint `gureum serve` printed), "
            "then `gureum remote use NAME` or `--remote NAME`, and unset GUREUM_URL",
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise self._untrusted() from exc
            raise ServiceDown(self.endpoint.where, self._home()) from exc
        if resp.status_code >= 400:
            self._raise(resp)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text

    @staticmethod
    def _raise(resp: httpx.Response) -> None:
        try:
            err = resp.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(resp.status_code, "http-error", resp.text[:500]) from None
        raise ApiError(resp.status_code, err["code"], err["message"])

    def _home(self) -> Path | None:
        return self.endpoint.socket.parent if self.endpoint.socket else None

    # -- instances -------------------------------------------------------------------------------
    def launch(
        self,
        name: str,
        image: str,
        *,
        cpus: int = 1,
        memory_mib: int = 256,
        disk_gib: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """``extra``: networks, secgroups, user_data, ssh_keys (see the API)."""
        body: dict[str, Any] = {
            "name": name,
            "image": image,
            "cpus": cpus,
            "memory_mib": memory_mib,
            **extra,
        }
        if disk_gib is not None:
            body["disk_gib"] = disk_gib
        return self.request("POST", path("instances"), json=body)

    def instances(self, all_projects: bool = False) -> list[dict[str, Any]]:
        params = {"all_projects": "true"} if all_projects else None
        return self.request("GET", path("instances"), params=params)

    def instance(self, ref: str) -> dict[str, Any]:
        return self.request("GET", path("instances", ref))

    def action(self, ref: str, action: str) -> dict[str, Any]:
        """``start``, ``stop`` or ``restart``: the operation to wait on."""
        return self.request("POST", path("instances", ref, action))

    def delete(self, ref: str, *, force: bool = False) -> dict[str, Any]:
        return self.request("DELETE", path("instances", ref), params={"force": str(force).lower()})

    def exec(
        self, ref: str, command: list[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"command": command, "timeout_s": timeout}
        if stdin:
            body["stdin_b64"] = base64.b64encode(stdin).decode()
        out = self.request("POST", path("instances", ref, "exec"), json=body, timeout=timeout + 30)
        out["stdout"] = base64.b64decode(out.pop("stdout_b64"))
        out["stderr"] = base64.b64decode(out.pop("stderr_b64"))
        return out

    def keypairs(self) -> list[dict[str, Any]]:
        return self.request("GET", path("keypairs"))

    def add_keypair(self, name: str, public_key: str) -> dict[str, Any]:
        return self.request("POST", path("keypairs"), json={"name": name, "public_key": public_key})

    def delete_keypair(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("keypairs", name))

    def ssh_access(self, ref: str) -> dict[str, Any]:
        """Who logs in, the address, the host keys the guest reported."""
        return self.request("GET", path("instances", ref, "ssh"))

    def console_log(self, ref: str, tail_bytes: int = 65536) -> str:
        return self.request(
            "GET", path("instances", ref, "console", "log"), params={"tail_bytes": tail_bytes}
        )

    def instance_metrics(self, ref: str, since: float = 0.0) -> dict[str, Any]:
        """The instance's figures over the last hour (one point per metrics round)."""
        return self.request("GET", path("instances", ref, "metrics"), params={"since": since})

    def sign_in_code(self) -> str:
        """A one-time code that signs a browser in to the web console as this caller."""
        return self.request("POST", "/v1/ui/codes")["code"]

    def console_url(self, code: str, base: str | None = None) -> str:
        """The web console's URL that trades ``code`` for a session (``base``: where the
        browser reaches the service, if not this client's URL)."""
        return f"{(base or self.endpoint.base_url).rstrip('/')}/ui/#code={code}"

    def metrics(self) -> str:
        """/metrics: the Prometheus text format, as this caller may see it."""
        return self.request("GET", "/metrics")

    # -- operations ------------------------------------------------------------------------------
    def operations(self, *, target: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if target is not None:
            params["target"] = target
        return self.request("GET", path("operations"), params=params)

    def operation(
        self, op_id: str, *, wait_s: float = 0, progress_after: int = 0
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            path("operations", op_id),
            params={"wait_s": wait_s, "progress_after": progress_after},
            timeout=wait_s + 30,
        )

    def follow(self, op_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each progress line as it happens, then the finished operation (last item).

        Long-polls: each request returns the moment there is news, so nothing waits on a timer.
        """
        seen = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            op = self.operation(op_id, wait_s=30, progress_after=seen)
            for line in op["progress"]:
                if line["index"] >= seen:
                    yield {"progress": line}
            seen = op["progress_count"]
            if op["status"] != "running":
                yield {"operation": op}
                return
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"operation {op_id} still running after {timeout} s")

    def wait(
        self,
        op_id: str,
        timeout: float | None = None,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Wait for an operation; raise ApiError with its error if it failed."""
        for item in self.follow(op_id, timeout):
            if "progress" in item and on_progress is not None:
                on_progress(item["progress"])
            if "operation" in item:
                op = item["operation"]
                if op["status"] == "failed":
                    err = op["error"] or {"code": "internal", "message": "failed"}
                    raise ApiError(0, err["code"], err["message"])
                return op
        raise AssertionError("unreachable")

    # -- snapshots, clones, resize ---------------------------------------------------------------
    def snapshot(self, ref: str, name: str, *, memory: bool = False) -> dict[str, Any]:
        body = {"name": name, "memory": memory}
        return self.request("POST", path("instances", ref, "snapshots"), json=body)

    def snapshots(self, ref: str) -> list[dict[str, Any]]:
        return self.request("GET", path("instances", ref, "snapshots"))

    def restore(self, ref: str, name: str, *, restart: bool = False) -> dict[str, Any]:
        params = {"restart": "true"} if restart else None
        return self.request(
            "POST", path("instances", ref, "snapshots", name, "restore"), params=params
        )

    def delete_snapshot(self, ref: str, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("instances", ref, "snapshots", name))

    def clone(self, ref: str, snapshot: str, name: str) -> dict[str, Any]:
        return self.request(
            "POST", path("instances", ref, "snapshots", snapshot, "clone"), json={"name": name}
        )

    def resize(
        self,
        ref: str,
        *,
        cpus: int | None = None,
        memory_mib: int | None = None,
        disk_gib: float | None = None,
    ) -> dict[str, Any]:
        body = _given(cpus=cpus, memory_mib=memory_mib, disk_gib=disk_gib)
        return self.request("POST", path("instances", ref, "resize"), json=body)

    # -- backups ---------------------------------------------------------------------------------
    def export(self, ref: str, out: Any, *, memory: bool = False) -> int:
        """Stream an instance's backup archive into the binary file ``out``; returns bytes.
        A POST: the export takes a snapshot of the VM (and is audited)."""
        where = path("instances", ref, "backup")
        params = {"memory": str(memory).lower()}
        return self._download("POST", where, out, what="the archive", params=params)

    def _download(
        self, method: str, where: str, out: Any, *, what: str, params: dict[str, str] | None = None
    ) -> int:
        written = 0
        try:
            with self.http.stream(method, where, params=params, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise(resp)
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise self._untrusted() from exc
            raise ServiceDown(self.endpoint.where, self._home()) from exc
        except httpx.HTTPError as exc:
            raise ApiError(0, "incomplete", f"{what} stream broke off: {exc}") from exc
        return written

    def import_backup(self, source: Any, name: str) -> dict[str, Any]:
        return self.request(
            "POST",
            path("backups", "import"),
            params={"name": name},
            content=_chunks(source),
            timeout=None,
        )

    def verify_backup(self, source: Any) -> dict[str, Any]:
        """Send an archive to be verified: the operation that imports, boots and checks it.
        An archive that is not whole is refused at once (``invalid-archive``)."""
        return self.request(
            "POST", path("backups", "verify"), content=_chunks(source), timeout=None
        )

    # -- images and host -------------------------------------------------------------------------
    def build_image(self, name: str) -> dict[str, Any]:
        return self.request("POST", path("images", name, "build"))

    def images(self) -> list[dict[str, Any]]:
        return self.request("GET", path("images"))

    def create_image(self, name: str, instance: str, description: str = "") -> dict[str, Any]:
        """The operation that makes image ``name`` of the project from one of its VMs."""
        body = {"name": name, "instance": instance, "description": description}
        return self.request("POST", path("images"), json=body)

    def image(self, name: str) -> dict[str, Any]:
        return self.request("GET", path("images", name))

    def template_image(self, name: str, cpus: int, memory_mib: int, nics: int) -> dict[str, Any]:
        """The operation that boots the image once and saves it as a template of this shape."""
        body = {"cpus": cpus, "memory_mib": memory_mib, "nics": nics}
        return self.request("POST", path("images", name, "template"), json=body)

    def remove_templates(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("images", name, "templates"))

    def verify_image(self, name: str) -> dict[str, Any]:
        """The operation that re-checks every file's checksum; its result is
        ``{name, ok, problems}``."""
        return self.request("POST", path("images", name, "verify"))

    def import_image(
        self,
        source: Any,
        name: str,
        default_user: str | None = None,
        firmware: str | None = None,
    ) -> dict[str, Any]:
        """Send a disk image file (qcow2 or raw) to become the image ``name``; ``firmware``
        (bios, uefi) overrides what its first sectors show."""
        return self.request(
            "POST",
            path("images", name, "import"),
            params=_given(default_user=default_user, firmware=firmware),
            content=_chunks(source),
            timeout=None,
        )

    def export_image(self, name: str, out: Any) -> int:
        """Stream an image's disk (qcow2) into the binary file ``out``; returns bytes."""
        return self._download("GET", path("images", name, "disk"), out, what="the image")

    def delete_image(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("images", name))

    def hosts(self) -> list[dict[str, Any]]:
        return self.request("GET", path("hosts"))

    def enrol_host(self, name: str, address: str) -> dict[str, Any]:
        return self.request("POST", path("hosts"), json={"name": name, "address": address})

    def check_host(self, name: str) -> dict[str, Any]:
        return self.request("POST", path("hosts", name, "check"))

    def set_host_state(self, name: str, cordon: bool) -> dict[str, Any]:
        return self.request("POST", path("hosts", name, "cordon" if cordon else "uncordon"))

    def host(self) -> dict[str, Any]:
        return self.request("GET", path("host"))

    def pool(self) -> dict[str, Any]:
        return self.request("GET", path("host", "pool"))

    def resize_pool(self, size: int) -> dict[str, Any]:
        return self.request("PUT", path("host", "pool"), json={"size": size})

    def version(self) -> dict[str, Any]:
        return self.request("GET", path("version"))

    def whoami(self) -> dict[str, Any]:
        """Who the service takes this client for: user, token, role in each project."""
        return self.request("GET", path("whoami"))

    # -- networks, security groups, NICs, port forwards ------------------------------------------
    def networks(self) -> list[dict[str, Any]]:
        return self.request("GET", path("networks"))

    def network(self, name: str) -> dict[str, Any]:
        return self.request("GET", path("networks", name))

    def create_network(
        self, name: str, subnet: str, *, imds_tokens_required: bool = False, nat: bool = False
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "subnet": subnet,
            "imds_tokens_required": imds_tokens_required,
            "nat": nat,
        }
        return self.request("POST", path("networks"), json=body)

    def delete_network(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("networks", name))

    def secgroups(self) -> list[dict[str, Any]]:
        return self.request("GET", path("secgroups"))

    def secgroup(self, name: str) -> dict[str, Any]:
        return self.request("GET", path("secgroups", name))

    def create_secgroup(self, name: str) -> dict[str, Any]:
        return self.request("POST", path("secgroups"), json={"name": name})

    def delete_secgroup(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("secgroups", name))

    def attach_secgroup(self, ref: str, group: str) -> dict[str, Any]:
        return self.request("POST", path("instances", ref, "secgroups", group))

    def detach_secgroup(self, ref: str, group: str) -> dict[str, Any]:
        return self.request("DELETE", path("instances", ref, "secgroups", group))

    def add_rule(
        self,
        group: str,
        ingress: str,
        *,
        from_cidr: str | None = None,
        from_group: str | None = None,
    ) -> dict[str, Any]:
        """The group with its rules (the new one last)."""
        body = {"ingress": ingress, "from_cidr": from_cidr, "from_group": from_group}
        return self.request("POST", path("secgroups", group, "rules"), json=body)

    def remove_rule(self, group: str, rule: str) -> dict[str, Any]:
        return self.request("DELETE", path("secgroups", group, "rules", rule))

    def nics(self, ref: str) -> list[dict[str, Any]]:
        return self.request("GET", path("instances", ref, "nics"))

    def add_nic(self, ref: str, *, network: str) -> dict[str, Any]:
        return self.request("POST", path("instances", ref, "nics"), json={"network": network})

    def remove_nic(self, ref: str, nic: str) -> dict[str, Any]:
        """``nic``: its id, MAC, address or network name (hot-unplugged if the VM runs)."""
        return self.request("DELETE", path("instances", ref, "nics", nic))

    def forwards(self, ref: str) -> list[dict[str, Any]]:
        return self.request("GET", path("instances", ref, "forwards"))

    def add_forward(self, ref: str, mapping: str) -> dict[str, Any]:
        """``mapping``: [ADDRESS:]HOSTPORT:GUESTPORT, the host side on a loopback address."""
        return self.request("POST", path("instances", ref, "forwards"), json={"mapping": mapping})

    def remove_forward(self, ref: str, forward: str) -> dict[str, Any]:
        return self.request("DELETE", path("instances", ref, "forwards", forward))

    # -- projects, members, users, tokens, audit -------------------------------------------------
    def projects(self) -> list[dict[str, Any]]:
        return self.request("GET", path("projects"))

    def project(self, name: str) -> dict[str, Any]:
        return self.request("GET", path("projects", name))

    def create_project(self, name: str, **quotas: int | float | None) -> dict[str, Any]:
        """``quotas``: max_instances, max_cpus, max_memory_mib, ... (None: unbounded)."""
        return self.request("POST", path("projects"), json={"name": name, **quotas})

    def set_quotas(self, name: str, **quotas: int | float | None) -> dict[str, Any]:
        """Only the quotas given change; one given as None loses its bound."""
        return self.request("PATCH", path("projects", name, "quotas"), json=quotas)

    def delete_project(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("projects", name))

    def usage(self, project: str) -> dict[str, Any]:
        return self.request("GET", path("projects", project, "usage"))

    def members(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", path("projects", project, "members"))

    def set_member(self, project: str, user: str, role: str) -> list[dict[str, Any]]:
        return self.request("PUT", path("projects", project, "members", user), json={"role": role})

    def remove_member(self, project: str, user: str) -> list[dict[str, Any]]:
        return self.request("DELETE", path("projects", project, "members", user))

    def users(self) -> list[dict[str, Any]]:
        return self.request("GET", path("users"))

    def create_user(self, name: str) -> dict[str, Any]:
        return self.request("POST", path("users"), json={"name": name})

    def delete_user(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", path("users", name))

    def tokens(self) -> list[dict[str, Any]]:
        return self.request("GET", path("tokens"))

    def create_token(
        self,
        name: str,
        *,
        user: str | None = None,
        expires_in_s: float | None = None,
        aws_project: str | None = None,
    ) -> dict[str, Any]:
        """The new token; its secret (``token``) is in this answer only. ``aws_project``: an
        AWS access key acting there instead (``access_key_id``, ``secret_access_key``)."""
        body: dict[str, Any] = {"name": name, "user": user}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        if aws_project is not None:
            body |= {"aws": True, "project": aws_project}
        return self.request("POST", path("tokens"), json=body)

    def revoke_token(self, token: str) -> dict[str, Any]:
        return self.request("DELETE", path("tokens", token))

    def audit(self, **filters: str | float | None) -> list[dict[str, Any]]:
        """Newest first. ``filters``: project, user, action (``POST /v1/instances``), since
        (epoch seconds), limit; one given as None is not applied."""
        return self.request("GET", path("audit"), params=_given(**filters))


Progress = Callable[[dict[str, Any]], None]


def path(*parts: str) -> str:
    """An API path: ``/v1/`` and the parts, each quoted whole, so that a name can never add a
    path segment, a query or a fragment to the request."""
    return "/v1/" + "/".join(quote(part, safe="") for part in parts)


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def refusal(frame: str) -> str:
    """The message of the one text frame a console or tunnel WebSocket sends: its refusal,
    ``{"error": {"code", "message"}}``, before it closes."""
    try:
        error = json.loads(frame).get("error", {})
    except (ValueError, AttributeError):
        return frame
    return str(error.get("message", frame)) if isinstance(error, dict) else frame


async def connect_console(endpoint: Endpoint, ref: str) -> ClientConnection:
    """A WebSocket to an instance's serial console: binary frames both ways, raw bytes."""
    return await _websocket(endpoint, path("instances", ref, "console"))


async def connect_events(
    endpoint: Endpoint,
    *,
    stream: str | None = None,
    after: int | None = None,
    all_projects: bool = False,
) -> ClientConnection:
    """A WebSocket of the event stream: JSON text frames, resumed after ``after`` of
    ``stream`` when both are given."""
    query = {"all_projects": "true"} if all_projects else {}
    if stream is not None and after is not None:
        query |= {"stream": stream, "after": str(after)}
    return await _websocket(endpoint, path("events") + ("?" + urlencode(query) if query else ""))


async def connect_ssh_tunnel(endpoint: Endpoint, ref: str) -> ClientConnection:
    """A WebSocket carrying a TCP stream to the instance's SSH port: binary frames both ways."""
    return await _websocket(endpoint, path("instances", ref, "ssh", "tunnel"))


async def _websocket(endpoint: Endpoint, where: str) -> ClientConnection:
    try:
        headers = endpoint.headers()
        if endpoint.socket is not None:
            return await unix_connect(
                str(endpoint.socket),
                uri=f"ws://gureum{where}",
                max_size=None,
                additional_headers=headers,
            )
        return await connect(
            endpoint.ws_url + where,
            max_size=None,
            additional_headers=headers,
            ssl=endpoint.ssl_context(),
        )
    except (OSError, FileNotFoundError) as exc:
        raise ServiceDown(
            endpoint.where, endpoint.socket.parent if endpoint.socket else None
        ) from exc


def _chunks(source: Any) -> Iterator[bytes]:
    while chunk := source.read(1 << 20):
        yield chunk
