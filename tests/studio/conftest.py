"""Browser-test set-up: one real `mmtune serve` (the embedded SmolLM2, the jobs API, the studio) and
one headless Debian Chromium driven by Playwright, shared by every test of the session. The browser is
its own fixture (`chromium_browser`), so a test that needs another server (test_browser_pictures.py: a
tiny FLUX base) opens a context of the same browser (`own_studio`) instead of a second Playwright.

Every request the page makes passes a route handler: one for another host than 127.0.0.1 is
aborted and recorded (`studio.outside`). Console errors and uncaught page errors are recorded
(`studio.errors`); each test fails on any it did not expect (`studio.expect_errors(pattern)`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
KEY = "studio-browser-key"
ROOT = Path(__file__).resolve().parents[2]


class Server:
    """`mmtune serve` in a subprocess on a fixed port and data dir, so it can be killed and started again."""

    def __init__(self, data_dir: Path, log: Path, args: tuple[str, ...] = ()):
        from serve.running import free_port

        self.port, self.data_dir, self.log_path, self.args = free_port(), data_dir, log, tuple(args)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmtune.cli", "serve", "--port", str(self.port), "--api-key", KEY,
             "--data-dir", str(self.data_dir), "--concurrency", "1", "--price-per-million", "2", *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, "the server exited: " + self.log_path.read_text()[-3000:]
            try:
                if "models" in httpx.get(f"{self.url}/health", headers=self.auth, timeout=2).json():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail("the server did not start: " + self.log_path.read_text()[-3000:])

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {KEY}"}

    def api(self, path: str):
        r = httpx.get(f"{self.url}{path}", headers=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown code runs."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Studio:
    def __init__(self, server: Server, page, context):
        self.server, self.page, self.context = server, page, context
        self.key = KEY
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.expected: list[re.Pattern] = []

    def expect_errors(self, pattern: str) -> None:
        """Console errors matching `pattern` are what this test provokes (a refused request)."""
        self.expected.append(re.compile(pattern))

    def check_clean(self) -> None:
        """No request left 127.0.0.1 and no console error the test did not expect."""
        unexpected = [e for e in self.errors if not any(p.search(e) for p in self.expected)]
        assert not unexpected, f"console errors: {unexpected}"
        assert not self.outside, f"requests left 127.0.0.1: {self.outside}"

    def go(self, hash_: str) -> None:
        self.page.goto(f"{self.server.url}/ui/{hash_}")
        self.page.wait_for_selector("body[data-signed-in]")


@pytest.fixture(scope="session")
def chromium_browser():
    """One headless Chromium for the session (Playwright's sync API runs one instance per thread)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (`make test` installs it: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install .[browser])")
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@contextmanager
def watched_studio(browser, server: Server):
    """A new context and page of `browser` on `server`, recording console errors and stopping (and
    recording) every request for another host than 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    s = Studio(server, page, context)

    def route(r):
        host = urlparse(r.request.url).hostname
        if host != "127.0.0.1":
            s.outside.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    context.route("**/*", route)
    page.on("console", lambda m: s.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: s.errors.append(f"uncaught: {e}"))
    try:
        yield s
    finally:
        context.close()


@pytest.fixture(scope="module")
def own_studio(tmp_path_factory, chromium_browser):
    """For a test module that needs another server than the shared one: `own_studio(serve_args)` starts
    `mmtune serve *serve_args` (its own data dir) and opens a watched page on it; both end with the module."""
    with ExitStack() as stack:
        def make(args: tuple[str, ...], timeout: float = 240) -> Studio:
            home = tmp_path_factory.mktemp("own-studio")
            server = Server(home / "data", home / "server.log", args)
            stack.callback(server.stop)
            server.start(timeout)
            return stack.enter_context(watched_studio(chromium_browser, server))

        yield make


@pytest.fixture(scope="session")
def studio(tmp_path_factory, chromium_browser):
    home = tmp_path_factory.mktemp("studio")
    server = Server(home / "data", home / "server.log")
    server.start()
    try:
        with watched_studio(chromium_browser, server) as s:
            yield s
    finally:
        server.stop()


@pytest.fixture
def ui(studio):
    """The shared studio; after the test, no request left 127.0.0.1 and no unexpected console error."""
    studio.expected = []
    studio.errors.clear()
    yield studio
    studio.check_clean()
