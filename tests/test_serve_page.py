"""The web page of `biogpt serve`, driven in a real headless Chromium (Debian's, through
Playwright): it asks for the key, streams a greedy completion that equals the API's,
shows a task model's relations as a table and its entities marked in the text, shows the
server's errors, and asks nothing of any host but the server. Screenshots of the relations
and the entities are saved in the test's tmp dir.

Needs Debian's `chromium` (`apt-get install chromium`) and Playwright from PyPI (`pip
install playwright`; no browser download: it drives /usr/bin/chromium).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from chromium import chromium, require_chromium

pytest.importorskip("fastapi", reason="biogpt serve needs the `serve` extra (fastapi)")
pytest.importorskip("uvicorn", reason="biogpt serve needs the `serve` extra (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the server tests call it with httpx")
sync_api = require_chromium()

from test_serve import KEY, Served  # noqa: E402
from test_serve_tasks import TAUGHT, TEXT, serve_models, task_models  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Served]:
    with serve_models(task_models(tmp_path_factory, ("bc5cdr", "ner"))) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[sync_api.BrowserContext]:
    """Chromium with a fresh profile; every URL it requests is kept in `.requested`."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        requested: list[str] = []
        context.on("request", lambda request: requested.append(request.url))
        context.requested = requested
        yield context


def open_page(browser, server: Served) -> sync_api.Page:
    """The page, loaded, with the key entered and the models listed."""
    page = browser.new_page()
    page.goto(server.url + "/")
    # the server needs a key: the page says so before anything else
    sync_api.expect(page.locator("#error")).to_contain_text("API key")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")  # `change` fires as the field loses focus
    sync_api.expect(page.locator("#model option")).to_have_count(3)
    sync_api.expect(page.locator("#error")).to_be_hidden()
    return page


def run_and_wait(page: sync_api.Page, how: str = "click") -> None:
    """Run the form (clicking Run, or Ctrl+Enter in the text) and wait until it ends."""
    page.evaluate("document.getElementById('status').textContent = ''")
    if how == "click":
        page.click("#run")
    else:
        page.press("#text", "Control+Enter")
    # waits that poll the DOM: the page's Content-Security-Policy refuses evaluated strings
    sync_api.expect(page.locator("#status")).to_have_text(re.compile(r"^(Done|Failed)\.$"))


def test_a_completion_streams_into_the_page_as_the_api_gives_it(browser, server) -> None:
    page = open_page(browser, server)
    page.select_option("#model", "mini")
    page.select_option("#task", "complete")
    page.fill("#text", "COVID-19 is")
    page.fill("#max-tokens", "24")
    # count the times the streamed text grows: more than once if it streamed
    page.evaluate(
        """() => {
        window.grew = 0;
        new MutationObserver(() => window.grew++).observe(
            document.getElementById('output-text'), {childList: true, characterData: true, subtree: true});
        }"""
    )
    run_and_wait(page)
    shown = page.text_content("#output-text")
    body = {"model": "mini", "prompt": "COVID-19 is", "max_tokens": 24, "temperature": 0}
    api = httpx.post(server.url + "/v1/completions", json=body,
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
    assert shown == api.json()["choices"][0]["text"]
    assert page.evaluate("window.grew") > 1
    assert page.text_content("#output-prompt") == "COVID-19 is"
    page.close()


def test_relations_show_as_a_table_and_entities_marked_in_the_text(
    browser, server, tmp_path
) -> None:
    page = open_page(browser, server)
    page.select_option("#model", "bc5cdr")
    assert page.input_value("#task") == "extract"  # a task model offers its task first
    page.fill("#text", TEXT)
    run_and_wait(page, how="keyboard")
    assert page.text_content("#output-text") == TAUGHT["bc5cdr"]
    rows = page.locator("#relations tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").all_text_contents() == ["famotidine", "delirium", "—"]
    page.screenshot(path=str(tmp_path / "relations.png"), full_page=True)

    page.select_option("#model", "ner")
    assert page.input_value("#task") == "entities"
    # only a completion has a token count, only a question a question
    sync_api.expect(page.locator("#max-tokens")).to_be_hidden()
    sync_api.expect(page.locator("#question")).to_be_hidden()
    run_and_wait(page)
    sync_api.expect(page.locator("#relations")).to_be_hidden()
    marks = page.locator("#highlighted mark")
    found = [(m.text_content(), m.get_attribute("data-type")) for m in marks.all()]
    assert found == [("Famotidine", "chemical"), ("delirium", "disease")]
    assert page.text_content("#highlighted") == TEXT  # marked, not changed
    page.screenshot(path=str(tmp_path / "entities.png"), full_page=True)
    assert (tmp_path / "entities.png").stat().st_size > 10_000
    page.close()


def test_errors_show_in_the_page(browser, server) -> None:
    page = open_page(browser, server)
    page.select_option("#model", "mini")
    page.select_option("#task", "complete")
    page.fill("#text", "")
    page.click("#run")
    sync_api.expect(page.locator("#error")).to_contain_text("Paste a text")
    page.fill("#text", "Aspirin")
    page.fill("#max-tokens", "5000")  # past the server's limit: its own message is shown
    run_and_wait(page)
    sync_api.expect(page.locator("#error")).to_contain_text("max_tokens must be in 1..1024")
    page.close()


def test_the_page_asks_nothing_of_any_other_host(browser, server) -> None:
    """Runs last: every request of the tests above went to the server (or was the
    page's empty `data:` icon)."""
    requested = browser.requested
    assert any(url.endswith("/v1/tasks/entities") for url in requested)
    elsewhere = [u for u in requested if not u.startswith((server.url + "/", "data:"))]
    assert not elsewhere
