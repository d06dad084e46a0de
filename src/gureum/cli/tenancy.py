"""Many users: remotes, projects, members, users, tokens, audit."""

from __future__ import annotations

import ssl
import time
from typing import Annotated
from urllib.parse import urlparse

import typer

from gureum.cli import output
from gureum.cli.output import Format, OutputOpt, bold, out
from gureum.client.client import Client, Endpoint, load_remotes, save_remotes
from gureum.errors import InvalidInput
from gureum.units import GIB, MIB, format_size, parse_duration, parse_size

remote_app = typer.Typer(
    help="Other gureum services, over TLS with a pinned certificate.", no_args_is_help=True
)
project_app = typer.Typer(help="Projects: quotas, members, usage.", no_args_is_help=True)
member_app = typer.Typer(help="A project's members and their roles.", no_args_is_help=True)
user_app = typer.Typer(help="Users (the administrator only).", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens: shown once, stored as a hash, revocable.", no_args_is_help=True
)
audit_app = typer.Typer(help="Who did what, when, with what result.", no_args_is_help=True)
project_app.add_typer(member_app, name="member")

ProjectName = Annotated[str, typer.Argument(help="Project name.")]


def _emit(data: object, fmt: Format, human: str) -> None:
    if fmt == Format.json:
        output.print_json(data)
    else:
        out.print(human)


# -- remotes -------------------------------------------------------------------------------------
def _server_certificate(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise InvalidInput("a remote is https://HOST:PORT (the service's GUREUM_LISTEN address)")
    try:
        return ssl.get_server_certificate((parsed.hostname, parsed.port or 443), timeout=10)
    except OSError as exc:
        raise InvalidInput(f"cannot reach {url}: {exc}") from exc


@remote_app.command("add")
def remote_add(
    name: Annotated[str, typer.Argument(help="A name for the remote.")],
    url: Annotated[str, typer.Argument(help="https://HOST:PORT")],
    token: Annotated[str, typer.Option("--token", help="API token for it.")],
    fingerprint: Annotated[
        str | None, typer.Option(help="Expected SHA256 fingerprint (as `gureum serve` prints it).")
    ] = None,
) -> None:
    """Add a remote service: its certificate is fetched, shown, and pinned."""
    from gureum.api.tls import fingerprint as fingerprint_of

    pem = _server_certificate(url)
    seen = fingerprint_of(pem.encode())
    if fingerprint and fingerprint.replace(":", "").upper() != seen.replace(":", ""):
        raise InvalidInput(f"the certificate's fingerprint is {seen}, not the one given: not added")
    data = load_remotes()
    data["remotes"][name] = {"url": url.rstrip("/"), "token": token, "cert": pem}
    data["current"] = data.get("current") or name
    with Client(Endpoint(url.rstrip("/"), None, token, None, pem)) as client:
        client.request("GET", "/v1/version")  # proves the token and the pinned certificate
    save_remotes(data)
    out.print(f"remote {name} added ({url}), certificate SHA256 {seen} pinned")


@remote_app.command("list")
def remote_list(fmt: OutputOpt = Format.table) -> None:
    """Configured remotes (the current one is used when GUREUM_HOME/GUREUM_URL are unset)."""
    data = load_remotes()
    rows = [
        {"name": n, "url": r["url"], "current": n == data.get("current")}
        for n, r in data["remotes"].items()
    ]
    if fmt == Format.json:
        output.print_json(rows)
    else:
        output.table(
            ["NAME", "URL", "CURRENT"],
            [[r["name"], r["url"], "*" if r["current"] else ""] for r in rows],
        )


@remote_app.command("use")
def remote_use(name: Annotated[str, typer.Argument(help="Remote name, or 'local'.")]) -> None:
    """Make a remote the default (``local``: the service in GUREUM_HOME)."""
    data = load_remotes()
    if name != "local" and name not in data["remotes"]:
        raise InvalidInput(f"no remote named {name!r}")
    data["current"] = None if name == "local" else name
    save_remotes(data)
    out.print(f"using {name}")


@remote_app.command("remove")
def remote_remove(name: Annotated[str, typer.Argument(help="Remote name.")]) -> None:
    """Forget a remote (its token and pinned certificate go with it)."""
    data = load_remotes()
    if data["remotes"].pop(name, None) is None:
        raise InvalidInput(f"no remote named {name!r}")
    if data.get("current") == name:
        data["current"] = None
    save_remotes(data)
    out.print(f"remote {name} removed")


# -- projects ------------------------------------------------------------------------------------
def _mib(text: str | None) -> int | None:
    return None if text is None else parse_size(text, default_unit="M") // MIB


def _bytes(text: str | None) -> int | None:
    return None if text is None else parse_size(text, default_unit="G")


@project_app.command("create")
def project_create(
    name: ProjectName,
    max_instances: Annotated[int | None, typer.Option(help="Instances at most.")] = None,
    max_cpus: Annotated[
        int | None, typer.Option(help="vCPUs at most, all instances together.")
    ] = None,
    max_memory: Annotated[str | None, typer.Option(help="Guest memory at most, e.g. 8G.")] = None,
    max_disk: Annotated[str | None, typer.Option(help="Disk at most, e.g. 100G.")] = None,
    max_snapshots: Annotated[int | None, typer.Option(help="Snapshots at most.")] = None,
    max_networks: Annotated[int | None, typer.Option(help="Networks at most.")] = None,
    max_forwards: Annotated[
        int | None, typer.Option(help="Port forwards at most, all instances together.")
    ] = None,
    cpu_limit: Annotated[
        float | None, typer.Option(help="Cores its VMs may really use (default: max-cpus).")
    ] = None,
    memory_limit: Annotated[
        str | None, typer.Option(help="Memory its VMs may really use, e.g. 4G.")
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Create a project with its quotas (the administrator only)."""
    body = {
        "name": name,
        "max_instances": max_instances,
        "max_cpus": max_cpus,
        "max_memory_mib": _mib(max_memory),
        "max_disk_bytes": _bytes(max_disk),
        "max_snapshots": max_snapshots,
        "max_networks": max_networks,
        "max_forwards": max_forwards,
        "cpu_limit": cpu_limit,
        "memory_limit_mib": _mib(memory_limit),
    }
    with Client() as c:
        project = c.request("POST", "/v1/projects", json=body)
    _emit(project, fmt, f"project {name} created")


@project_app.command("list")
def project_list(fmt: OutputOpt = Format.table) -> None:
    """Projects you belong to (all, for the administrator)."""
    with Client() as c:
        projects = c.request("GET", "/v1/projects")
    if fmt == Format.json:
        output.print_json(projects)
        return
    output.table(
        ["NAME", "ROLE", "QUOTAS"],
        [[p["name"], p["role"] or "-", _quotas_text(p["quotas"])] for p in projects],
    )


def _quotas_text(quotas: dict[str, int | None]) -> str:
    parts = []
    for key, value in quotas.items():
        if value is None:
            continue
        label = key.removeprefix("max_")
        if key == "max_disk_bytes":
            parts.append(f"disk {value / GIB:g}G")
        elif key == "max_memory_mib":
            parts.append(f"memory {value}M")
        else:
            parts.append(f"{label} {value}")
    return ", ".join(parts) or "unlimited"


@project_app.command("show")
def project_show(name: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """A project's quotas, limits and members."""
    with Client() as c:
        project = c.request("GET", f"/v1/projects/{name}")
        members = c.request("GET", f"/v1/projects/{name}/members")
    if fmt == Format.json:
        output.print_json({**project, "members": members})
        return
    out.print(bold(project["name"], f" ({project['role']}): {_quotas_text(project['quotas'])}"))
    for m in members:
        out.print(f"  {m['user']:<20} {m['role']}")


@project_app.command("quota")
def project_quota(
    name: ProjectName,
    max_instances: Annotated[int | None, typer.Option(help="Instances at most.")] = None,
    max_cpus: Annotated[int | None, typer.Option(help="vCPUs at most, all together.")] = None,
    max_memory: Annotated[str | None, typer.Option(help="Guest memory at most, e.g. 8G.")] = None,
    max_disk: Annotated[str | None, typer.Option(help="Disk at most, e.g. 100G.")] = None,
    max_snapshots: Annotated[int | None, typer.Option(help="Snapshots at most.")] = None,
    max_networks: Annotated[int | None, typer.Option(help="Networks at most.")] = None,
    max_forwards: Annotated[
        int | None, typer.Option(help="Port forwards at most, all instances together.")
    ] = None,
    cpu_limit: Annotated[
        float | None, typer.Option(help="Cores its VMs may really use (control group).")
    ] = None,
    memory_limit: Annotated[
        str | None, typer.Option(help="Memory its VMs may really use, e.g. 4G.")
    ] = None,
    unset: Annotated[
        list[str] | None,
        typer.Option(help="Remove a bound, e.g. --unset max-cpus (repeatable; administrator)."),
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Change a project's quotas; options not given stay as they are. The administrator
    (root) grants; the project's admins may only lower what was granted."""
    given: dict[str, int | float | None] = {
        "max_instances": max_instances,
        "max_cpus": max_cpus,
        "max_memory_mib": _mib(max_memory),
        "max_disk_bytes": _bytes(max_disk),
        "max_snapshots": max_snapshots,
        "max_networks": max_networks,
        "max_forwards": max_forwards,
        "cpu_limit": cpu_limit,
        "memory_limit_mib": _mib(memory_limit),
    }
    body: dict[str, int | float | None] = {k: v for k, v in given.items() if v is not None}
    names = {k.replace("_mib", "").replace("_bytes", "").replace("_", "-"): k for k in given}
    for option in unset or []:
        key = names.get(option.removeprefix("--"))
        if key is None:
            raise InvalidInput(f"--unset takes one of {', '.join(sorted(names))}, not {option!r}")
        body[key] = None
    with Client() as c:
        project = c.request("PATCH", f"/v1/projects/{name}/quotas", json=body)
    _emit(project, fmt, f"{name}: {_quotas_text(project['quotas'])}")


@project_app.command("delete")
def project_delete(name: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """Delete an empty project (the administrator only)."""
    with Client() as c:
        project = c.request("DELETE", f"/v1/projects/{name}")
    _emit(project, fmt, f"project {name} deleted")


@project_app.command("usage")
def project_usage(name: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """Allocated (what quotas count) next to really used: CPU time, memory, disk."""
    with Client() as c:
        usage = c.request("GET", f"/v1/projects/{name}/usage")
    if fmt == Format.json:
        output.print_json(usage)
        return
    a, u, q = usage["allocated"], usage["used"], usage["quotas"]

    def of(key: str, value: str, fmt_q=str) -> str:
        limit = q.get(key)
        return value + (f" of {fmt_q(limit)}" if limit is not None else "")

    out.print(bold(name))
    out.print(f"  instances   {of('max_instances', str(a['instances']))}")
    out.print(
        f"  vCPUs       {of('max_cpus', str(a['cpus']))}  allocated; "
        f"CPU time used {u['cpu_seconds'] if u['cpu_seconds'] is not None else '-'} s"
    )
    memory = of("max_memory_mib", f"{a['memory_mib']}M", lambda v: f"{v}M")
    out.print(f"  memory      {memory} allocated; resident {format_size(u['resident_bytes'])}")
    disk = of("max_disk_bytes", format_size(a["disk_bytes"]), format_size)
    out.print(f"  disk        {disk} allocated; written {format_size(u['disk_bytes'])}")
    out.print(f"  snapshots   {of('max_snapshots', str(a['snapshots']))}")
    out.print(f"  networks    {of('max_networks', str(a['networks']))}")
    out.print(f"  forwards    {of('max_forwards', str(a['forwards']))}")


@member_app.command("add")
def member_add(
    project: ProjectName,
    user: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option(help="admin, member or viewer.")] = "member",
    fmt: OutputOpt = Format.table,
) -> None:
    """Give a user a role in a project (or change it)."""
    with Client() as c:
        members = c.request("PUT", f"/v1/projects/{project}/members/{user}", json={"role": role})
    _emit(members, fmt, f"{user} is a {role} of {project}")


@member_app.command("remove")
def member_remove(
    project: ProjectName,
    user: Annotated[str, typer.Argument(help="User name.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Take a user's role in a project away (their tokens stay, for their other projects)."""
    with Client() as c:
        members = c.request("DELETE", f"/v1/projects/{project}/members/{user}")
    _emit(members, fmt, f"{user} removed from {project}")


@member_app.command("list")
def member_list(project: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """A project's users and their roles."""
    with Client() as c:
        members = c.request("GET", f"/v1/projects/{project}/members")
    if fmt == Format.json:
        output.print_json(members)
    else:
        output.table(["USER", "ROLE"], [[m["user"], m["role"]] for m in members])


# -- users and tokens ----------------------------------------------------------------------------
@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="User name.")], fmt: OutputOpt = Format.table
) -> None:
    """Add a user (the administrator only); give them a role with `project member add`."""
    with Client() as c:
        user = c.request("POST", "/v1/users", json={"name": name})
    _emit(user, fmt, f"user {name} created")


@user_app.command("list")
def user_list(fmt: OutputOpt = Format.table) -> None:
    """All users (the administrator only)."""
    with Client() as c:
        users = c.request("GET", "/v1/users")
    if fmt == Format.json:
        output.print_json(users)
    else:
        output.table(["NAME", "ID"], [[u["name"], u["id"]] for u in users])


@user_app.command("delete")
def user_delete(
    name: Annotated[str, typer.Argument(help="User name.")], fmt: OutputOpt = Format.table
) -> None:
    """Delete a user; their tokens stop working at once."""
    with Client() as c:
        user = c.request("DELETE", f"/v1/users/{name}")
    _emit(user, fmt, f"user {name} deleted")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for, e.g. laptop.")],
    user: Annotated[str | None, typer.Option("--user", help="Whose (administrator only).")] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Lifetime, e.g. 12h, 30d or 2w (default: until revoked)."),
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Create a token. Its secret is shown this once (-o json: field ``token``)."""
    body: dict[str, object] = {"name": name, "user": user}
    if expires is not None:
        body["expires_in_s"] = parse_duration(expires, what="--expires")
    with Client() as c:
        token = c.request("POST", "/v1/tokens", json=body)
    if fmt == Format.json:
        output.print_json(token)
    else:
        out.print(
            f"token {token['id']} for {token['user']} ({name}); keep it now, it is not shown again:"
        )
        print(token["token"])


def _expiry(at: float | None) -> str:
    if at is None:
        return "never"
    left = at - time.time()
    return "in " + output.duration(left) if left > 0 else "expired"


@token_app.command("list")
def token_list(fmt: OutputOpt = Format.table) -> None:
    """Your tokens (the administrator sees everyone's); secrets are never shown again."""
    with Client() as c:
        tokens = c.request("GET", "/v1/tokens")
    if fmt == Format.json:
        output.print_json(tokens)
        return
    output.table(
        ["ID", "USER", "NAME", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
        [
            [
                t["id"],
                t["user"],
                t["name"],
                output.age(t["created_at"]),
                output.age(t["last_used_at"]),
                _expiry(t["expires_at"]),
                "yes" if t["revoked_at"] else "",
            ]
            for t in tokens
        ],
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id.")], fmt: OutputOpt = Format.table
) -> None:
    """Revoke a token: the next request with it is refused."""
    with Client() as c:
        token = c.request("DELETE", f"/v1/tokens/{token_id}")
    _emit(token, fmt, f"token {token_id} revoked")


@audit_app.command("list")
def audit_list(
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. 'POST /v1/instances'.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only the last while, e.g. 15m, 12h or 7d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    fmt: OutputOpt = Format.table,
) -> None:
    """The audit log of state-changing calls (kept audit_retention_days, 90 by default)."""
    after = time.time() - parse_duration(since, what="--since") if since is not None else None
    wanted = {"project": project, "user": user, "action": action, "since": after, "limit": limit}
    params = {k: v for k, v in wanted.items() if v is not None}
    with Client() as c:
        rows = c.request("GET", "/v1/audit", params=params)
    if fmt == Format.json:
        output.print_json(rows)
        return
    output.table(
        ["WHEN", "USER", "PROJECT", "ACTION", "TARGET", "RESULT"],
        [
            [
                time.strftime("%H:%M:%S", time.localtime(r["at"])),
                r["user"],
                r["project"] or "-",
                r["action"],
                r["target"] or "-",
                str(r["result"]),
            ]
            for r in rows
        ],
    )


def whoami(fmt: OutputOpt = Format.table) -> None:
    """Who you are to the service you talk to: user, token, and your role in each project."""
    with Client() as c:
        me = c.request("GET", "/v1/whoami")
        where = c.endpoint.base_url if c.endpoint.socket is None else str(c.endpoint.socket)
    if fmt == Format.json:
        output.print_json({**me, "endpoint": where})
        return
    how = "the host's administrator (local socket)" if me["superuser"] else me["user"]
    if me["token_name"]:
        how += f", token {me['token_name']} ({me['token_id']})"
    out.print(bold(how, f" at {where}"))
    roles = ", ".join(f"{m['project']} ({m['role']})" for m in me["projects"])
    out.print(f"  projects: {roles or 'none'}")


def register(app: typer.Typer) -> None:
    app.command("whoami")(whoami)
    app.add_typer(remote_app, name="remote")
    app.add_typer(project_app, name="project")
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
    app.add_typer(audit_app, name="audit")
