"""The web console in a real browser (Playwright driving Debian's chromium) against a real service
and a real tiny VM, through `gureum ui`'s tunnel: sign in with a token, launch from the form and
see it reach running without a reload, type into the serial console and read the guest's answer,
take a snapshot and see it listed; a viewer gets no action buttons and a 403 when they force one;
a member of another project sees nothing of it. Screenshots of each main page are taken on the
way (into docs/console/ with GUREUM_SCREENSHOTS=1: `make screenshots`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Service

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "docs" / "console" if os.environ.get("GUREUM_SCREENSHOTS") else None


class Console:
    """`gureum ui` running, and the people of two projects with their tokens."""

    def __init__(self, service: Service) -> None:
        self.service = service
        for project in ("cons-a", "cons-b"):
            service.cli("project", "create", project)
        self.tokens = {}
        for user, project, role in (
            ("con-alice", "cons-a", "member"),
            ("con-vera", "cons-a", "viewer"),
            ("con-bob", "cons-b", "member"),
        ):
            service.cli("user", "create", user)
            service.cli("project", "member", "add", project, user, "--role", role)
            made = service.cli("token", "create", "--user", user, "--name", "ui", "-o", "json")
            self.tokens[user] = json.loads(made.stdout)["token"]
        self.ui = subprocess.Popen(
            [sys.executable, "-m", "gureum.cli.main", "ui"],
            env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.ui.stdout is not None
        self.admin_url = self.ui.stdout.readline().strip()  # signs in as root, once
        self.base = self.admin_url.split("#")[0]

    def close(self) -> None:
        self.ui.terminate()
        self.ui.wait(10)
        self.service.cli("--project", "cons-a", "delete", "cona1", "--force", check=False)


@pytest.fixture(scope="module")
def console(service: Service) -> Iterator[Console]:
    c = Console(service)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = SHOTS or Path(tempfile.mkdtemp(prefix="gureum-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def page_of(browser, errors: list[str]):  # type: ignore[no-untyped-def]
    page = browser.new_context(viewport={"width": 1366, "height": 860}).new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def sign_in(page, console: Console, user: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(console.base + "#/instances")
    page.fill("#token", console.tokens[user])
    page.click("button:has-text('Sign in')")
    page.wait_for_selector(f"#who:has-text('{user}')")


def test_a_member_launches_uses_the_console_and_snapshots(browser, console, shots) -> None:
    errors: list[str] = []
    page = page_of(browser, errors)
    sign_in(page, console, "con-alice")
    assert page.input_value("#project") == "cons-a"  # alice's only project
    page.goto(console.base + "#/launch")
    page.fill("#f-name", "cona1")
    page.click("button:has-text('Launch')")
    # The instance page comes as the launch ends; its state follows the event stream.
    page.wait_for_selector("#detail-state [data-state=running]", timeout=180_000)
    page.wait_for_selector("#terminal-status:has-text('connected')")
    page.click("#terminal")
    page.keyboard.type("echo console-$((6*7))\n")
    # (A locator, not a script: the page's content security policy forbids evaluating strings.)
    page.locator("#terminal", has_text="console-42").wait_for(timeout=30_000)
    page.fill("#snap-name", "first")
    page.click("button:has-text('Take snapshot')")
    page.wait_for_selector("tr[data-snapshot=first]", timeout=120_000)
    page.screenshot(path=str(shots / "instance.png"), full_page=True)
    # An image of the running VM, the project's own: listed, then deleted, from the console.
    page.once("dialog", lambda dialog: dialog.accept("cona-img"))
    page.click("button:has-text('Make image')")
    page.locator("#notice", has_text="image cona-img: done").wait_for(timeout=120_000)
    page.goto(console.base + "#/images")
    page.wait_for_selector("tr[data-image=cona-img] td:has-text('this project')", timeout=120_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("tr[data-image=cona-img] button:has-text('Delete')")
    page.wait_for_selector("tr[data-image=cona-img]", state="detached", timeout=60_000)
    assert errors == []


def test_the_list_follows_state_changes_without_a_reload(browser, console, shots) -> None:
    errors: list[str] = []
    page = page_of(browser, errors)
    sign_in(page, console, "con-alice")
    page.wait_for_selector("tr[data-instance=cona1] [data-state=running]")
    console.service.cli("--project", "cons-a", "stop", "cona1")  # from elsewhere: the CLI
    page.wait_for_selector("tr[data-instance=cona1] [data-state=stopped]", timeout=60_000)
    page.click("tr[data-instance=cona1] button[data-action=start]")
    page.wait_for_selector("tr[data-instance=cona1] [data-state=running]", timeout=120_000)
    assert errors == []


def test_a_viewer_sees_no_actions_and_is_refused_if_they_force_one(browser, console) -> None:
    errors: list[str] = []
    page = page_of(browser, errors)
    sign_in(page, console, "con-vera")
    page.wait_for_selector("tr[data-instance=cona1]")
    assert page.locator("button[data-action]").count() == 0
    assert page.locator("a:has-text('Launch an instance')").count() == 0
    forced = page.evaluate(
        """async () => {
            const s = await (await fetch('/ui/session')).json();
            const r = await fetch('/v1/instances/cona1/stop', {method: 'POST',
                headers: {'X-CSRF-Token': s.csrf, 'X-Gureum-Project': 'cons-a'}});
            return [r.status, (await r.json()).error.code];
        }"""
    )
    assert forced == [403, "forbidden"]
    assert errors == []


def test_a_member_of_another_project_sees_nothing_of_it(browser, console) -> None:
    errors: list[str] = []
    page = page_of(browser, errors)
    sign_in(page, console, "con-bob")
    page.wait_for_selector("text=No instances in this project.")
    assert [o.strip() for o in page.locator("#project option").all_inner_texts()] == [
        "cons-b (member)"
    ]
    seen = page.evaluate(
        """async () => {
            const own = await fetch('/v1/instances/cona1');
            const there = await fetch('/v1/instances/cona1',
                                      {headers: {'X-Gureum-Project': 'cons-a'}});
            const ws = new WebSocket(`ws://${location.host}/v1/events?project=cons-a`);
            const frame = await new Promise((ok) => {
                ws.onmessage = (m) => ok(m.data);
                ws.onclose = (e) => ok('closed ' + e.code);
            });
            return [own.status, there.status, frame];
        }"""
    )
    assert seen[0] == 404 and seen[1] == 404
    assert "not-found" in seen[2] or seen[2].startswith("closed 44")
    assert errors == []


def test_screenshots_of_each_main_page(browser, console, shots) -> None:
    """The administrator's view (signed in by `gureum ui`'s one-time code), page by page."""
    errors: list[str] = []
    page = page_of(browser, errors)
    page.goto(console.admin_url)
    page.wait_for_selector("#who:has-text('administrator')")
    page.select_option("#project", "cons-a")
    page.wait_for_selector("tr[data-instance=cona1]")
    for name, route, ready in (
        ("instances", "#/instances", "tr[data-instance=cona1]"),
        ("launch", "#/launch", "#f-name"),
        ("networks", "#/networks", "h1:has-text('Networks')"),
        ("secgroups", "#/secgroups", "h1:has-text('Security groups')"),
        ("images", "#/images", "td:has-text('tiny')"),
        ("project", "#/project", "h2:has-text('Quotas and use')"),
        ("audit", "#/audit", "td:has-text('con-alice')"),
        ("host", "#/host", "dt:has-text('Accelerator')"),
    ):
        page.goto(console.base + route)
        page.wait_for_selector(ready)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert errors == []
