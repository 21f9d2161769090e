"""The server's limits and keys, apart from the HTTP code so that `biogpt serve --help` reads
their defaults without importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """The server's limits and keys; `biogpt serve`'s flags."""

    max_batch_size: int = 8  # rows decoded together; up to 8, a row decodes as it would alone
    max_queue: int = 64  # requests waiting for the batch before 429
    max_tokens: int = 1024  # the largest `max_tokens` a request may ask for
    max_body_bytes: int = 1 << 20  # request bodies past this get 413
    timeout: float | None = 600.0  # seconds a request may take, queue included; None: no limit
    api_keys: tuple[str, ...] = ()  # Bearer keys; empty: no key needed
    # Origins whose pages may call the API from a browser (CORS); empty: none but the
    # server's own page, which needs no CORS header.
    allow_origins: tuple[str, ...] = ()
