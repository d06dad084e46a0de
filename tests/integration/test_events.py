"""`gureum events` against a real service: a container's launch and stop followed as they happen,
one JSON line each, in order (the stream's filtering and resumption: tests/unit/test_events*)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from tests.integration.conftest import Service
from tests.waiting import wait_for


def test_gureum_events_follows_what_happens(service: Service) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "gureum.cli.main", "events", "-o", "json"],
        env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[dict] = []  # type: ignore[type-arg]

    def read() -> None:
        assert follower.stdout is not None
        for text in follower.stdout:
            lines.append(json.loads(text))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(1)  # it has subscribed
        service.cli("launch", "tiny", "--name", "ev1", "--container")
        service.cli("stop", "ev1")

        def states() -> list[str]:
            return [e["state"] for e in lines if e["kind"] == "instance" and e["name"] == "ev1"]

        wait_for(lambda: states()[-1:] == ["stopped"], 15, what="ev1's stop seen")
        assert states()[:1] == ["pending"] and "running" in states()
        ops = [e for e in lines if e["kind"] == "operation" and e["operation"] == "launch"]
        assert ops[0]["status"] == "running" and ops[-1]["status"] == "succeeded"
        assert any(e.get("progress") for e in ops)  # its progress, as it happened
        seqs = [e["seq"] for e in lines]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        follower.terminate()
        follower.wait(10)
        service.cli("delete", "ev1", "--force", check=False)
