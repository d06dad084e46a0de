"""Many users: remotes, projects, members, users, tokens, audit."""

from __future__ import annotations

import inspect
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlparse

import typer

from gureum.cli import output
from gureum.cli.output import (
    Format,
    OutputOpt,
    bold,
    call,
    emit,
    lines,
    listing,
    out,
    read_duration,
    read_size,
    usage_error,
)
from gureum.client.client import (
    ApiError,
    Client,
    Endpoint,
    ServiceDown,
    load_remotes,
    save_remotes,
)
from gureum.errors import NotFound
from gureum.model.tenancy import LIMITS, Amount
from gureum.model.tenancy import QUOTAS as MODEL_QUOTAS
from gureum.units import GIB, MIB, format_size

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


# -- remotes -------------------------------------------------------------------------------------
def _server_certificate(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise usage_error("a remote is https://HOST:PORT (the service's GUREUM_LISTEN address)")
    try:
        return ssl.get_server_certificate((parsed.hostname, parsed.port or 443), timeout=10)
    except OSError as exc:
        raise ServiceDown(url, None, f"cannot reach {url}: {exc}; not added") from exc


@remote_app.command("add")
def remote_add(
    name: Annotated[str, typer.Argument(help="A name for the remote.")],
    url: Annotated[str, typer.Argument(help="https://HOST:PORT")],
    token: Annotated[str, typer.Option("--token", help="API token for it.")],
    fingerprint: Annotated[
        str | None, typer.Option(help="Expected SHA256 fingerprint (as `gureum serve` prints it).")
    ] = None,
    fmt: OutputOpt = Format.table,
) -> None:
    """Add a remote service: its certificate is fetched, shown, and pinned."""
    from gureum.api.tls import fingerprint as fingerprint_of

    pem = _server_certificate(url)
    seen = fingerprint_of(pem.encode())
    if fingerprint and fingerprint.replace(":", "").upper() != seen.replace(":", ""):
        said = f"{url} presented a certificate whose fingerprint is {seen}, not the one given"
        raise ApiError(0, "untrusted", said + ": not added")
    data = load_remotes()
    data["remotes"][name] = {"url": url.rstrip("/"), "token": token, "cert": pem}
    data["current"] = data.get("current") or name
    with Client(Endpoint(url.rstrip("/"), None, token, None, pem)) as client:
        client.version()  # proves the token and the pinned certificate
    save_remotes(data)
    added = {"name": name, "url": url.rstrip("/"), "fingerprint": seen}
    emit(added, fmt, f"remote {name} added ({url}), certificate SHA256 {seen} pinned")


@remote_app.command("list")
def remote_list(fmt: OutputOpt = Format.table) -> None:
    """Configured remotes (the current one is used when GUREUM_HOME/GUREUM_URL are unset)."""
    data = load_remotes()
    rows = [
        {"name": n, "url": r["url"], "current": n == data.get("current")}
        for n, r in data["remotes"].items()
    ]
    listing(
        rows, fmt, ["NAME", "URL", "CURRENT"], lambda r: [r["name"], r["url"], _star(r["current"])]
    )


def _star(current: bool) -> str:
    return "*" if current else ""


@remote_app.command("use")
def remote_use(
    name: Annotated[str, typer.Argument(help="Remote name, or 'local'.")],
    fmt: OutputOpt = Format.table,
) -> None:
    """Make a remote the default (``local``: the service in GUREUM_HOME)."""
    data = load_remotes()
    if name != "local" and name not in data["remotes"]:
        raise NotFound(f"no remote named {name!r}")
    data["current"] = None if name == "local" else name
    save_remotes(data)
    emit({"current": name}, fmt, f"using {name}")


@remote_app.command("remove")
def remote_remove(
    name: Annotated[str, typer.Argument(help="Remote name.")], fmt: OutputOpt = Format.table
) -> None:
    """Forget a remote (its token and pinned certificate go with it)."""
    data = load_remotes()
    remote = data["remotes"].pop(name, None)
    if remote is None:
        raise NotFound(f"no remote named {name!r}")
    if data.get("current") == name:
        data["current"] = None
    save_remotes(data)
    emit({"name": name, "url": remote["url"]}, fmt, f"remote {name} removed")


# -- projects ------------------------------------------------------------------------------------
def _mib(text: str) -> int:
    return read_size(text, default_unit="M") // MIB


def _bytes(text: str) -> int:
    return read_size(text, default_unit="G")


@dataclass(frozen=True)
class _Quota:
    """One quota or limit of a project, as an option of ``project create`` and ``quota``."""

    field: str  # the API's (and the model's) name
    kind: type  # what the option takes
    help: str
    to_api: Callable[[Any], int | float] = lambda value: value

    @property
    def option(self) -> str:  # max_memory_mib: --max-memory
        return self.field.removesuffix("_mib").removesuffix("_bytes").replace("_", "-")

    def parameter(self) -> inspect.Parameter:
        option = typer.Option(f"--{self.option}", help=self.help)
        # A type made at run time, which a static checker cannot follow.
        annotation = Annotated[self.kind | None, option]  # type: ignore[name-defined]
        return inspect.Parameter(
            self.option.replace("-", "_"), inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
            annotation=annotation,
        )  # fmt: skip


# A project's quotas and limits as options: one a quota of the model's table (QUOTAS, then the
# control group's LIMITS), each read the way its amount says (sizes as 8G, cores as 0.5).
_READ: dict[Amount, tuple[type, Callable[[Any], int | float]]] = {
    Amount.COUNT: (int, int),
    Amount.MIB: (str, _mib),
    Amount.BYTES: (str, _bytes),
    Amount.CORES: (float, float),
}
QUOTAS = tuple(_Quota(q.field, *_READ[q.amount][:1], q.help, _READ[q.amount][1])
               for q in MODEL_QUOTAS + LIMITS)  # fmt: skip


def _quota_options(command: Callable[..., None]) -> Callable[..., None]:
    """Gives a command that takes ``**quotas`` one option per entry of QUOTAS (after its
    arguments); ``_quotas_given`` turns what it gets into the API's fields."""
    params = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name != "quotas"
    ]
    at = next(i for i, p in enumerate(params) if p.default is not p.empty)  # after arguments
    params[at:at] = [q.parameter() for q in QUOTAS]
    # typer reads a command's parameters from inspect.signature, which takes __signature__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command


def _quotas_given(options: dict[str, Any]) -> dict[str, int | float]:
    given = {q.field: options.get(q.option.replace("-", "_")) for q in QUOTAS}
    return {q.field: q.to_api(given[q.field]) for q in QUOTAS if given[q.field] is not None}


@project_app.command("create")
@_quota_options
def project_create(name: ProjectName, fmt: OutputOpt = Format.table, **quotas: Any) -> None:
    """Create a project with its quotas (the administrator only)."""
    with Client() as c:
        project = c.create_project(name, **_quotas_given(quotas))
    emit(project, fmt, f"project {name} created: {_quotas_text(project)}")


@project_app.command("list")
def project_list(fmt: OutputOpt = Format.table) -> None:
    """Projects you belong to (all, for the administrator)."""
    listing(
        call(Client.projects),
        fmt,
        ["NAME", "ROLE", "QUOTAS"],
        lambda p: [p["name"], p["role"] or "-", _quotas_text(p)],
    )


def _quotas_text(project: dict[str, Any]) -> str:
    """A project's quotas and its control group's limits, those set, in the model's order
    (QUOTAS, then LIMITS): e.g. ``cpus 4, memory 2048M, cpu limit 1.5 cores``."""
    bounds = {**project["quotas"], **{q.field: project.get(q.field) for q in LIMITS}}
    parts = []
    for quota in MODEL_QUOTAS + LIMITS:
        value = bounds.get(quota.field)
        if value is None:
            continue
        label = quota.field.removeprefix("max_").removesuffix("_mib").removesuffix("_bytes")
        parts.append(f"{label.replace('_', ' ')} {_SHOWN[quota.amount](value)}")
    return ", ".join(parts) or "unlimited"


# How a bound is shown, by what its number is (the options take the same forms).
_SHOWN: dict[Amount, Callable[[Any], str]] = {
    Amount.COUNT: str,
    Amount.MIB: lambda mib: f"{mib}M",
    Amount.BYTES: lambda size: f"{size / GIB:g}G",
    Amount.CORES: lambda cores: f"{cores:g} cores",
}


@project_app.command("show")
def project_show(name: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """A project's quotas, limits and members."""
    with Client() as c:
        project = c.project(name)
        members = c.members(name)
    heading = bold(project["name"], f" ({project['role']}): {_quotas_text(project)}")
    people = (f"  {m['user']:<20} {m['role']}" for m in members)
    emit({**project, "members": members}, fmt, lines(heading, *people))


@project_app.command("quota")
@_quota_options
def project_quota(
    name: ProjectName,
    unset: Annotated[
        list[str] | None,
        typer.Option(help="Remove a bound, e.g. --unset max-cpus (repeatable; administrator)."),
    ] = None,
    fmt: OutputOpt = Format.table,
    **quotas: Any,
) -> None:
    """Change a project's quotas; options not given stay as they are. The administrator
    (root) grants; the project's admins may only lower what was granted."""
    body: dict[str, int | float | None] = {**_quotas_given(quotas)}
    fields = {q.option: q.field for q in QUOTAS}
    for option in unset or []:
        field = fields.get(option.removeprefix("--"))
        if field is None:
            raise usage_error(f"--unset takes one of {', '.join(sorted(fields))}, not {option!r}")
        body[field] = None
    project = call(Client.set_quotas, name, **body)
    emit(project, fmt, f"{name}: {_quotas_text(project)}")


@project_app.command("delete")
def project_delete(name: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """Delete an empty project (the administrator only)."""
    emit(call(Client.delete_project, name), fmt, f"project {name} deleted")


@project_app.command("usage")
def project_usage(name: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """Allocated (what quotas count) next to really used: CPU time, memory, disk."""
    usage = call(Client.usage, name)
    emit(usage, fmt, lines(bold(name), *_usage_lines(usage)))


def _usage_lines(usage: dict[str, Any]) -> list[str]:
    a, u, q = usage["allocated"], usage["used"], usage["quotas"]

    def of(key: str, value: str, fmt_q: Callable[[Any], str] = str) -> str:
        limit = q.get(key)
        return value + (f" of {fmt_q(limit)}" if limit is not None else "")

    cpu_time = u["cpu_seconds"] if u["cpu_seconds"] is not None else "-"
    memory = of("max_memory_mib", f"{a['memory_mib']}M", lambda v: f"{v}M")
    disk = of("max_disk_bytes", format_size(a["disk_bytes"]), format_size)
    return [
        f"  instances   {of('max_instances', str(a['instances']))}",
        f"  vCPUs       {of('max_cpus', str(a['cpus']))}  allocated; CPU time used {cpu_time} s",
        f"  memory      {memory} allocated; resident {format_size(u['resident_bytes'])}",
        f"  disk        {disk} allocated; written {format_size(u['disk_bytes'])}",
        f"  snapshots   {of('max_snapshots', str(a['snapshots']))}",
        f"  networks    {of('max_networks', str(a['networks']))}",
        f"  forwards    {of('max_forwards', str(a['forwards']))}",
    ]


UserName = Annotated[str, typer.Argument(help="User name.")]


@member_app.command("add")
def member_add(
    project: ProjectName,
    user: UserName,
    role: Annotated[str, typer.Option(help="admin, member or viewer.")] = "member",
    fmt: OutputOpt = Format.table,
) -> None:
    """Give a user a role in a project (or change it)."""
    emit(call(Client.set_member, project, user, role), fmt, f"{user} is a {role} of {project}")


@member_app.command("remove")
def member_remove(project: ProjectName, user: UserName, fmt: OutputOpt = Format.table) -> None:
    """Take a user's role in a project away (their tokens stay, for their other projects)."""
    emit(call(Client.remove_member, project, user), fmt, f"{user} removed from {project}")


@member_app.command("list")
def member_list(project: ProjectName, fmt: OutputOpt = Format.table) -> None:
    """A project's users and their roles."""
    listing(call(Client.members, project), fmt, ["USER", "ROLE"], lambda m: [m["user"], m["role"]])


# -- users and tokens ----------------------------------------------------------------------------
@user_app.command("create")
def user_create(name: UserName, fmt: OutputOpt = Format.table) -> None:
    """Add a user (the administrator only); give them a role with `project member add`."""
    emit(call(Client.create_user, name), fmt, f"user {name} created")


@user_app.command("list")
def user_list(fmt: OutputOpt = Format.table) -> None:
    """All users (the administrator only)."""
    listing(call(Client.users), fmt, ["NAME", "ID"], lambda u: [u["name"], u["id"]])


@user_app.command("delete")
def user_delete(name: UserName, fmt: OutputOpt = Format.table) -> None:
    """Delete a user; their tokens stop working at once."""
    emit(call(Client.delete_user, name), fmt, f"user {name} deleted")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for, e.g. laptop.")],
    user: Annotated[str | None, typer.Option("--user", help="Whose (administrator only).")] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Lifetime, e.g. 12h, 30d or 2w (default: until revoked)."),
    ] = None,
    aws: Annotated[
        bool,
        typer.Option(
            "--aws", help="An AWS access key for the EC2 API (boto3, the AWS CLI) instead."
        ),
    ] = False,
    fmt: OutputOpt = Format.table,
) -> None:
    """Create a token. Its secret is shown this once (-o json: field ``token``). With --aws, an
    access key id and secret access key (-o json: ``access_key_id``, ``secret_access_key``)
    acting in one project (the global --project, default: default)."""
    lifetime = None if expires is None else read_duration(expires, what="--expires")
    project = (Endpoint.from_env().project or "default") if aws else None
    token = call(Client.create_token, name, user=user, expires_in_s=lifetime, aws_project=project)

    def show() -> None:
        what = f"AWS access key for {token['user']} in {token['project']}" if aws else "token"
        out.print(f"{what} {token['id']} ({name}); keep it now, the secret is not shown again:")
        if aws:
            print(f"AWS_ACCESS_KEY_ID={token['access_key_id']}")
            print(f"AWS_SECRET_ACCESS_KEY={token['secret_access_key']}")
        else:
            print(token["token"])

    emit(token, fmt, show)


def _expiry(at: float | None) -> str:
    if at is None:
        return "never"
    left = at - time.time()
    return "in " + output.duration(left) if left > 0 else "expired"


@token_app.command("list")
def token_list(fmt: OutputOpt = Format.table) -> None:
    """Your tokens (the administrator sees everyone's); secrets are never shown again."""
    listing(
        call(Client.tokens),
        fmt,
        ["ID", "USER", "NAME", "AWS KEY", "CREATED", "LAST USED", "EXPIRES", "REVOKED"],
        _token_row,
    )


def _token_row(t: dict[str, Any]) -> list[str]:
    return [
        t["id"],
        t["user"],
        t["name"],
        t.get("access_key_id") or "",
        output.age(t["created_at"]),
        output.age(t["last_used_at"]),
        _expiry(t["expires_at"]),
        "yes" if t["revoked_at"] else "",
    ]


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id.")], fmt: OutputOpt = Format.table
) -> None:
    """Revoke a token: the next request with it is refused."""
    emit(call(Client.revoke_token, token_id), fmt, f"token {token_id} revoked")


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
    after = time.time() - read_duration(since, what="--since") if since is not None else None
    listing(
        call(Client.audit, project=project, user=user, action=action, since=after, limit=limit),
        fmt,
        ["WHEN", "USER", "PROJECT", "ACTION", "TARGET", "RESULT"],
        _audit_row,
    )


def _audit_row(r: dict[str, Any]) -> list[str]:
    return [
        time.strftime("%H:%M:%S", time.localtime(r["at"])),
        r["user"],
        r["project"] or "-",
        r["action"],
        r["target"] or "-",
        str(r["result"]),
    ]


def whoami(fmt: OutputOpt = Format.table) -> None:
    """Who you are to the service you talk to: user, token, and your role in each project."""
    with Client() as c:
        me = c.whoami()
        where = c.endpoint.where
    how = "the host's administrator (local socket)" if me["superuser"] else me["user"]
    if me["token_name"]:
        how += f", token {me['token_name']} ({me['token_id']})"
    roles = ", ".join(f"{m['project']} ({m['role']})" for m in me["projects"])
    emit(
        {**me, "endpoint": where},
        fmt,
        lines(bold(how, f" at {where}"), f"  projects: {roles or 'none'}"),
    )


def register(app: typer.Typer) -> None:
    app.command("whoami")(whoami)
    app.add_typer(remote_app, name="remote")
    app.add_typer(project_app, name="project")
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
    app.add_typer(audit_app, name="audit")
