"""`gureum events`: follow the event stream (service/events.py), as the console does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Annotated, Any

import typer
from websockets.exceptions import ConnectionClosed

from gureum.cli.output import Format, OutputOpt, err
from gureum.client.client import Endpoint, ServiceDown, connect_events

RETRY_S = 1.0  # between a lost connection and the next try


def line(event: dict[str, Any]) -> str:
    """One event for people: when, what, whose, and the fields that say what happened."""
    when = time.strftime("%H:%M:%S", time.localtime(event.get("at", 0)))
    kind = event.get("kind", "?")
    if kind == "instance":
        what = f"{event.get('name')} {event.get('change')}: {event.get('state')}"
        if event.get("reason"):
            what += f" ({event['reason']})"
    elif kind == "operation":
        what = f"{event.get('operation')} {event.get('target')} {event.get('status')}"
        if event.get("progress"):
            what += f": {event['progress']}"
        if event.get("error"):
            what += f": {event['error'].get('message')}"
    elif kind == "audit":
        what = f"{event.get('user')} {event.get('action')} -> {event.get('result')}"
    else:
        what = json.dumps({k: v for k, v in event.items() if k not in ("at", "kind", "stream")})
    return f"{when} #{event.get('seq')} {kind} {what}"


async def follow(endpoint: Endpoint, fmt: Format, all_projects: bool) -> int:
    """Print events until interrupted; a lost connection is made again and the stream resumed
    from the last event printed (or said to have a gap, when it cannot be)."""
    stream: str | None = None
    after: int | None = None
    while True:
        try:
            ws = await connect_events(endpoint, stream=stream, after=after,
                                      all_projects=all_projects)  # fmt: skip
        except (ServiceDown, OSError) as exc:
            err.print(f"cannot reach the service ({exc}); trying again")
            await asyncio.sleep(RETRY_S)
            continue
        try:
            async for frame in ws:
                said = json.loads(frame)
                if "error" in said:
                    err.print(f"error: {said['error']['message']} [{said['error']['code']}]")
                    return 1
                if "position" in said:  # where the stream is now
                    if said["gap"]:
                        err.print("(events were missed while disconnected: list again to see "
                                  "where things are)")  # fmt: skip
                    if after is None or said["stream"] != stream:  # from now, in this run
                        after = said["position"]
                    stream = said["stream"]
                    continue
                if "end" in said:
                    break  # fell behind: resumed from the last event printed
                after = said["seq"]
                sys.stdout.write((json.dumps(said) if fmt == Format.json else line(said)) + "\n")
                sys.stdout.flush()
        except ConnectionClosed:
            pass
        await asyncio.sleep(RETRY_S)


def register(app: typer.Typer) -> None:
    @app.command()
    def events(
        all_projects: Annotated[
            bool,
            typer.Option(
                "--all-projects", help="Every project's events and the host's (administrator)."
            ),
        ] = False,
        fmt: OutputOpt = Format.table,
    ) -> None:
        """Follow what happens, as it happens: instances' state changes, operations and their
        progress, and the audit, of the project (--project, or GUREUM_PROJECT), one line each
        (-o json: one JSON object a line, the same stream the web console follows). A lost
        connection is made again and the stream resumed where it stopped. Ctrl-C ends it."""
        with contextlib.suppress(KeyboardInterrupt):
            raise typer.Exit(asyncio.run(follow(Endpoint.from_env(), fmt, all_projects)))
