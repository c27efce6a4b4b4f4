"""Real headless Chromium for the leaderboard tests: Playwright driving Debian's ``chromium``
through ``executable_path`` (Playwright's own browser download is never used).

Missing Playwright or Chromium skips the tests that need a browser, except when ``CI`` is set or
``VLMBENCH_REQUIRE_BROWSER=1``: then it fails.
"""

from __future__ import annotations

import os
import shutil

import pytest

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") or os.environ.get("VLMBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required (CI or VLMBENCH_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("no chromium executable on PATH (Debian: apt-get install chromium)")
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("chromium-home"))  # chromium writes a profile there
    manager = sync_playwright().start()
    try:
        try:
            instance = manager.chromium.launch(executable_path=executable, headless=True, args=LAUNCH_ARGS)
        except Exception as exc:  # noqa: BLE001 - a broken browser install is an environment problem
            _unavailable(f"chromium did not start: {str(exc).splitlines()[0]}")
        print(f"chromium {instance.version} ({executable})")
        yield instance
        instance.close()
    finally:
        manager.stop()
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


class Watched:
    """A page with every dialog, console error and page error recorded."""

    def __init__(self, browser, javascript: bool = True) -> None:
        self.context = browser.new_context(java_script_enabled=javascript, viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    def _dialog(self, dialog) -> None:
        self.problems.append(f"dialog {dialog.type}: {dialog.message}")
        dialog.dismiss()

    def goto(self, url: str):
        response = self.page.goto(url)
        assert response is None or response.ok, url
        self.page.wait_for_load_state("load")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser):
    pages: list[Watched] = []

    def make(javascript: bool = True) -> Watched:
        pages.append(Watched(browser, javascript))
        return pages[-1]

    yield make
    for w in pages:
        assert w.problems == [], w.problems
        w.close()


