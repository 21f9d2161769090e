"""report.html in a real headless Chromium (Debian's, through Playwright): the page shows
the results table and its plots, and asks nothing of any host, not even the file's own
folder, since everything is inline. A screenshot is saved in the test's tmp dir, and also
at $BIOGPT_SCREENSHOT where that is set, to be looked at.

Needs Debian's `chromium` (`apt-get install chromium`) and Playwright from PyPI (`pip
install playwright`; no browser download: it drives /usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import chromium, require_chromium
from shared_data import DATA, needs_data

pytest.importorskip("matplotlib", reason="the report's plots need the `plot` extra")
sync_api = require_chromium()

from biogpt.report.build import write_report  # noqa: E402

SCREENSHOT_ENV = "BIOGPT_SCREENSHOT"  # where to save a copy of the screenshot, if set

pytestmark = needs_data


@pytest.fixture(scope="module")
def report(tmp_path_factory, few_predictions, reproduce_run, evaluate_report) -> Path:
    """A report of a reproduce run (DDI, with its loss curve), an evaluate report
    (PubMedQA, with its loss curve) and a HoC predictions file; returns report.json's
    path."""
    root = tmp_path_factory.mktemp("report-page")
    few_predictions("hoc", root / "hoc.jsonl")
    inputs = [
        str(reproduce_run(root)),
        str(evaluate_report(root)),
        f"hoc:test:{root / 'hoc.jsonl'}",
    ]
    return write_report(inputs, root / "out", data_dir=DATA, bootstrap=50, note=lambda _: None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[sync_api.BrowserContext]:
    """Chromium with a fresh profile. Every request but the page itself (and `data:` URIs,
    which are the page's own bytes) is refused and kept in `.refused`."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        refused: list[str] = []
        allowed: set[str] = set()

        def route(handle) -> None:
            url = handle.request.url
            if url in allowed or url.startswith("data:"):
                handle.continue_()
            else:
                refused.append(url)
                handle.abort()

        context.route("**/*", route)
        context.on(
            "request",
            lambda r: (
                None if r.url in allowed or r.url.startswith("data:") else refused.append(r.url)
            ),
        )
        context.refused = refused
        context.allowed = allowed
        yield context


def test_the_page_shows_the_results_and_the_plots(browser, report, tmp_path) -> None:
    data = json.loads(report.read_text(encoding="utf-8"))
    page_url = report.with_name("report.html").as_uri()
    browser.allowed.add(page_url)
    page = browser.new_page()
    page.goto(page_url)
    page.wait_for_load_state("load")

    rows = page.locator("table.results tbody tr")
    assert rows.count() == len(data["results"])
    first = data["results"][0]
    cells = rows.first.locator("td").all_text_contents()
    assert cells[:3] == [first["task"], first["split"], first["metric"]]
    assert cells[3].startswith(f"{first['value']:.4f} [")
    f1 = next(r for r in data["results"] if r["task"] == "ddi" and r["metric"] == "f1")
    ddi_row = rows.nth(data["results"].index(f1)).locator("td").all_text_contents()
    assert ddi_row[4] == "0.4076"  # the paper's 40.76 on score's scale

    widths = page.evaluate("Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == len(data["plots"]) >= 6
    assert all(width > 0 for width in widths)
    assert page.locator("h2", has_text="[3] hoc test").count() == 1
    sync_api.expect(page.locator("body")).to_contain_text("Reasoning-required setting")
    sync_api.expect(page.locator("body")).to_contain_text("bootstrap over sentences")

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
    page.close()
    assert browser.refused == []  # not one request left the file


def test_the_page_names_no_url(report) -> None:
    """Nothing in the file points anywhere: every src and href is a `data:` URI and no
    scheme of a network or file URL appears."""
    html = report.with_name("report.html").read_text(encoding="utf-8")
    assert not re.search(r"\b(?:https?|ftp|wss?|file):", html)
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert links and all(link.startswith("data:") for link in links)
    assert "@import" not in html and "url(" not in html
