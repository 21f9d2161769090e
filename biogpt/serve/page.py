"""The web page at `/`: plain HTML, CSS and JavaScript from `static/`, served by the API's
own process and needing no network (no CDN, no web fonts).

The page lists the models (`GET /v1/models`) and what each records, streams a greedy
completion (`POST /v1/completions`, server-sent events read with `fetch` and a
`ReadableStream`) or a task model's answer (`POST /v1/tasks/...`), and shows relations as
a table, entities marked in the text, labels and answers. An API key, when the server
needs one, is typed into the page and kept in the tab's `sessionStorage`.

The files are read once, when the app is built, into memory: a request names one of the
three routes below, never a file. The page itself is not behind the key (it holds no
data); every call it makes is. Its Content-Security-Policy lets it load and call nothing
but this server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

STATIC = Path(__file__).parent / "static"

# route -> (file under static/, media type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
}

HEADERS = {
    # 'self' only: no script, style, font or request can reach another host
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def responder(content: bytes, media_type: str) -> Callable[[], Response]:
    """A route handler that answers with `content` (it takes no parameters at all)."""

    def serve() -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)

    return serve


def add_page(app: FastAPI) -> None:
    """Serve the page's files at their routes."""
    for route, (name, media_type) in FILES.items():
        handler = responder((STATIC / name).read_bytes(), media_type)
        app.add_api_route(route, handler, methods=["GET"], include_in_schema=False)
