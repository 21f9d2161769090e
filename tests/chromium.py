"""Debian's Chromium driven by Playwright, launched the one way the page tests need.

    sync_api = require_chromium()          # at module level: skips the module without them
    with chromium(profile_dir) as context: # a fresh profile, headless, nothing in the background
        page = context.new_page()

No browser is downloaded: Playwright from PyPI drives /usr/bin/chromium
(`apt-get install chromium`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless as root, with nothing started in the background: this machine's network is
# closed, and Chromium's update, sync and safe-browsing calls would only fail.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT_MS = 30_000  # Playwright's timeout for every wait of a page test


def require_chromium() -> ModuleType:
    """playwright.sync_api; skips the calling test module, saying what to install, where
    Playwright or Chromium is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the page test drives Chromium with Playwright: pip install playwright",
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            "the page test needs Debian's Chromium at /usr/bin/chromium: apt-get install chromium",
            allow_module_level=True,
        )
    return sync_api


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A Chromium context (playwright's BrowserContext) on the fresh profile folder
    `profile`, closed on the way out."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()
