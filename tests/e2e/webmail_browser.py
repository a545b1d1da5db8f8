"""The webmail as a user drives it: Debian's Chromium through Playwright, from the lab host.

Never downloads a browser and never reaches the internet (the background-networking flags
keep Chromium from phoning home). The browser trusts the lab CA through an NSS database in
a temporary HOME; without ``certutil`` (Debian's libnss3-tools) the browser ignores
certificate errors instead, and the caller proves separately that the endpoint verifies
against the lab CA (``verify_endpoint``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Response

from tests.conftest import REPO, patience

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # we are root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "artifacts" / "webmail"
TIMEOUT_MS = int(patience(30) * 1000)
# The login form's answer: a wrong password's "Login failed" carries Dovecot's failed-login
# delay (auth_failure_delay, 2 s) plus the penalty Dovecot keeps for the browser's address
# (doubling per recent failure from it, up to 15 s; the tests fail logins from this host on
# purpose). The test checks the answer; its time is not a claim here.
LOGIN_TIMEOUT_MS = int(patience(60) * 1000)

# Every message RoundCube shows in its message stack (toasts: "Login failed.", "Message sent
# successfully.", size errors, ...), in order, kept in sessionStorage so that a message shown
# just before a navigation (the compose screen closes 0.5 s after a send) is not lost.
MESSAGE_LOG = "mailcluster-test-messages"
RECORD_MESSAGES = f"""
(() => {{
  const key = {MESSAGE_LOG!r};
  const record = (el) => {{
    const text = (el.textContent || "").trim();
    if (!text) return;
    try {{
      const log = JSON.parse(sessionStorage.getItem(key) || "[]");
      log.push(text);
      sessionStorage.setItem(key, JSON.stringify(log));
    }} catch (e) {{}}
  }};
  new MutationObserver((mutations) => {{
    for (const m of mutations)
      for (const n of m.addedNodes)
        if (n.nodeType === 1 && n.parentElement && n.parentElement.id === "messagestack")
          record(n);
  }}).observe(document, {{ childList: true, subtree: true }});
}})();
"""


def trust_lab_ca(home: Path, ca_cert: str) -> bool:
    """Create ``home``/.pki/nssdb (where Chromium on Linux looks) trusting the lab CA.

    Returns False, creating nothing, when ``certutil`` is not installed."""
    certutil = shutil.which("certutil")
    if certutil is None:
        return False
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    for args in (
        ["-N", "--empty-password"],
        ["-A", "-t", "C,,", "-n", "mailcluster-lab", "-i", ca_cert],
    ):
        subprocess.run([certutil, "-d", f"sql:{db}", *args], check=True, capture_output=True)
    return True


def verify_endpoint(url: str, ca_cert: str) -> None:
    """A TLS handshake with ``url``'s host that verifies its certificate (chain and name)
    against the lab CA; raises ssl.SSLError otherwise."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    ctx = ssl.create_default_context(cafile=ca_cert)
    with (
        socket.create_connection((host, parts.port or 443), timeout=20) as sock,
        ctx.wrap_socket(sock, server_hostname=host),
    ):
        pass


def screenshot_prefix(test_name: str) -> str:
    """A file-name-safe prefix for a test's screenshots."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name).strip("_")


class Webmail:
    """One browser tab on RoundCube (its own context: cookies, session), with screenshots
    of each step in artifacts/webmail/<test>-<NN>-<step>.png."""

    def __init__(self, page: Page, base_url: str, test_name: str) -> None:
        self.page = page
        self.base_url = base_url
        self.prefix = screenshot_prefix(test_name)
        self.steps = 0
        self.responses: list[tuple[int, str]] = []
        page.on("response", self._seen)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for old in ARTIFACTS.glob(f"{self.prefix}-*.png"):
            old.unlink()

    def _seen(self, response: Response) -> None:
        self.responses.append((response.status, response.url))

    def shot(self, step: str) -> Path:
        self.steps += 1
        path = ARTIFACTS / f"{self.prefix}-{self.steps:02d}-{screenshot_prefix(step)}.png"
        self.page.screenshot(path=str(path))
        return path

    # -- RoundCube's messages -------------------------------------------------------------

    def messages(self) -> list[str]:
        """The messages RoundCube has shown in this tab so far."""
        for _ in range(20):
            try:
                log = self.page.evaluate(f"sessionStorage.getItem({MESSAGE_LOG!r})")
                return list(parse_json_list(log))
            except PlaywrightError:  # a navigation destroyed the context: ask the next page
                self.page.wait_for_load_state()
        return []

    def wait_for_message(self, pattern: str, timeout: float = 30) -> str:
        """The first message RoundCube showed that matches ``pattern`` (a regex), waiting
        for it up to ``timeout`` seconds."""
        regex = re.compile(pattern)
        found = poll(
            lambda: next((m for m in self.messages() if regex.search(m)), None),
            f"RoundCube to show a message matching {pattern!r}",
            timeout,
            on_timeout=lambda: f"messages shown: {self.messages()}; page text: {self.text()}",
        )
        return str(found)

    def text(self) -> str:
        try:
            return self.page.locator("body").inner_text(timeout=5_000)[-2000:]
        except PlaywrightError as exc:
            return f"(no page text: {exc})"

    # -- steps ----------------------------------------------------------------------------

    def ready(self) -> None:
        """Wait until RoundCube's page script has started and no request of its own is in
        flight: until then it ignores commands (a click on "Compose" does nothing)."""
        self.page.wait_for_function("() => window.rcmail && rcmail.loaded && !rcmail.busy")

    def command(self, selector: str) -> None:
        """Click one of RoundCube's buttons (Compose, Refresh, Send, Logout) once it listens."""
        self.ready()
        self.page.locator(selector).click()

    def open(self, path: str = "") -> None:
        # Chromium aborts a navigation when the host's interfaces change under it (other
        # virtual networks coming up on the test machine): load again, as a user would.
        for attempt in range(3):
            try:
                self.page.goto(self.base_url + path)
                break
            except PlaywrightError as exc:
                if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                    raise
        self.ready()

    def login(self, user: str, password: str) -> None:
        """Submit the login form (from wherever the tab is, the form is on every page of a
        logged-out session)."""
        for attempt in range(3):
            if not self.page.locator("#rcmloginuser").is_visible():
                self.open()
                if attempt and not self.page.locator("#rcmloginuser").is_visible():
                    break  # the aborted submission had logged in
            self.page.locator("#rcmloginuser").fill(user)
            self.page.locator("#rcmloginpwd").fill(password)
            self.shot("login form filled")
            try:
                with self.page.expect_navigation(timeout=LOGIN_TIMEOUT_MS):
                    self.page.locator("#rcmloginsubmit").click(timeout=LOGIN_TIMEOUT_MS)
                break
            except PlaywrightError as exc:
                # As in open(): Chromium aborted the navigation because the host's
                # interfaces changed; the user submits again.
                if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 2:
                    raise
                self.open()
        self.ready()

    def compose(self) -> None:
        self.command("#taskmenu a.compose")
        self.page.locator("#compose-subject").wait_for()
        self.ready()

    def attach(self, path: Path) -> None:
        """Pick a file with the compose screen's upload input (what "Attach a file" opens)."""
        self.page.locator("#uploadformInput").set_input_files(str(path))


def parse_json_list(text: str | None) -> list[Any]:
    value = json.loads(text) if text else []
    return value if isinstance(value, list) else []


def poll(
    check: Callable[[], Any],
    what: str,
    timeout: float,
    interval: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """``check()``'s first truthy result, polling until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f": {on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# -- a browser that hangs ----------------------------------------------------------------


def _chromium_processes() -> list[int]:
    """Chromium processes started from this test process (under Playwright's driver)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry.name)] = (ppid, comm)

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = table.get(pid, (0, ""))[0]
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, (_, comm) in table.items() if comm.startswith("chrom") and ours(pid)]


@contextlib.contextmanager
def browser_watchdog(seconds: float) -> Iterator[threading.Event]:
    """Kill this process's Chromium if the block has not finished after ``seconds``.

    Playwright's ``BrowserContext.close()`` has no timeout, and once (CI, a page still
    loading RoundCube's mailbox after "Message sent successfully") it never returned:
    the whole run waited until CI's limit. Killed, the browser ends the call with an
    error; the event says that it fired, and the caller starts a new browser."""
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        for pid in _chromium_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
