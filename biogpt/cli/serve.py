"""`biogpt serve`: an OpenAI-compatible HTTP server with continuous batching (biogpt.serve).

FastAPI and uvicorn come with the optional extra: `pip install biogpt[serve]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biogpt.cli.common import AddCommand, default_of
from biogpt.errors import BioGPTError

if TYPE_CHECKING:
    from biogpt.tasks import Task


def model_specs(values: list[str]) -> dict[str, str]:
    """`--model` values as {name: path}: `NAME=PATH`, or a bare PATH (or `mini`) that
    names itself (a directory by its last part)."""
    specs: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            path = value
            name = Path(value.rstrip("/")).name or value
        if not name or not path:
            raise BioGPTError(f"--model {value!r}: expected NAME=PATH or PATH")
        if name in specs:
            raise BioGPTError(f"--model: the name {name!r} is given twice")
        specs[name] = path
    return specs


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys of --api-key and of --api-key-file (one a line; blank lines and `#` lines
    are skipped)."""
    keys = list(args.api_key or [])
    if args.api_key_file:
        try:
            lines = Path(args.api_key_file).read_text().splitlines()
        except OSError as err:
            raise BioGPTError(f"--api-key-file {args.api_key_file}: {err.strerror}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not keys:
            raise BioGPTError(f"--api-key-file {args.api_key_file}: no key in it")
    return tuple(keys)


def model_tasks(specs: dict[str, str]) -> dict[str, Task | None]:
    """The task each model records (`task.json` beside its weights, written by `biogpt
    finetune`), None for a model without one; read before the server starts, so that a
    broken record is a one-line error naming its file."""
    from biogpt.tasks import recorded_task

    return {name: recorded_task(path) for name, path in specs.items()}


def loader(path: str, dtype: str | None):
    """What loads one served model and its tokenizer, in the server's loading thread."""

    def load():
        from biogpt.api import BioGPT
        from biogpt.checkpoint.pipeline import tokenizer_for

        model = BioGPT.from_pretrained(path, dtype=dtype).eval()
        return model, tokenizer_for(path, model.config.vocab_size)

    return load


def cmd_serve(args: argparse.Namespace) -> None:
    from biogpt.serve.settings import ServeSettings

    try:
        from biogpt.serve.app import create_app, run
    except ImportError as err:
        raise BioGPTError(
            f"biogpt serve needs FastAPI and uvicorn ({err.name} is missing): "
            "pip install 'biogpt[serve]'"
        ) from None
    specs = model_specs(args.model)
    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        timeout=args.timeout or None,
        api_keys=api_keys(args),
        allow_origins=tuple(args.allow_origin or ()),
    )
    if settings.max_batch_size < 1 or settings.max_queue < 0 or settings.max_tokens < 1:
        raise BioGPTError("--max-batch-size and --max-tokens must be >= 1, --max-queue >= 0")
    tasks = model_tasks(specs)
    loaders = {name: loader(path, args.dtype) for name, path in specs.items()}
    app = create_app(loaders, settings, tasks)
    where = f"http://{args.host}:{args.port}"
    served = ", ".join(
        f"{name} ({task.name})" if task is not None else name for name, task in tasks.items()
    )
    print(
        f"serving {served} on {where} (OpenAI API under /v1; tasks under /v1/tasks; "
        "the page at /; /health, /metrics)",
        file=sys.stderr,
        flush=True,
    )
    run(app, host=args.host, port=args.port, log_level=args.log_level)


SERVE_EXAMPLES = """\
# serve the built-in model on 127.0.0.1:8000 until Ctrl-C; GET /health says 200 once loaded
$ biogpt serve --model mini
serving mini on http://127.0.0.1:8000 (OpenAI API under /v1; ...)

# a base model and a fine-tuned one (its task.json names its task) side by side, behind a
# key, on every interface
$ biogpt serve --model base=mini --model bc5cdr=runs/bc5cdr/averaged \\
    --host 0.0.0.0 --port 8080 --api-key-file keys.txt --max-batch-size 8
serving base, bc5cdr (bc5cdr) on http://0.0.0.0:8080 (OpenAI API under /v1; ...)

# then, from any OpenAI client (temperature 0 is greedy decoding, as in vLLM):
#   curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
#     -d '{"model": "mini", "prompt": "COVID-19 is", "max_tokens": 20, "temperature": 0}'
#   openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
# the fine-tuned model's task, and the web page at http://127.0.0.1:8000/ :
#   curl http://127.0.0.1:8000/v1/tasks/extract -H 'Authorization: Bearer KEY' \\
#     -d '{"model": "bc5cdr", "text": "Famotidine-associated delirium."}'
"""


def register(add: AddCommand) -> None:
    from biogpt.serve.settings import ServeSettings

    parser = add(
        "serve",
        cmd_serve,
        "Serve models over HTTP with an OpenAI-compatible API (/v1/completions, "
        "/v1/chat/completions, streaming), fine-tuned models' tasks (/v1/tasks/...) and a "
        "web page (/), with continuous batching.",
        SERVE_EXAMPLES,
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model to serve, as NAME=PATH or a bare PATH (named after itself); PATH as "
        "for `biogpt generate --model` (mini: the built-in model); a model fine-tuned by "
        "`biogpt finetune` also answers on its task's endpoint; repeatable",
    )
    parser.add_argument(
        "--dtype", help="fp32 (default), bf16, fp16 or int8 (see `biogpt generate --help`)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--api-key", action="append", help="a key clients must send as a Bearer token (repeatable)"
    )
    parser.add_argument("--api-key-file", help="a file of keys, one a line")
    parser.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="let pages from ORIGIN (e.g. https://lab.example.org) call the API from a "
        "browser (CORS); repeatable; default: none",
    )
    limits = parser.add_argument_group("limits")
    for flag, field, help_text in (
        ("--max-batch-size", "max_batch_size", "rows decoded together; up to 8, each row gets "
         "the tokens it gets alone"),
        ("--max-queue", "max_queue", "requests waiting before the server answers 429"),
        ("--max-tokens", "max_tokens", "the largest max_tokens a request may ask for"),
        ("--max-body-bytes", "max_body_bytes", "larger request bodies get 413"),
    ):  # fmt: skip
        limits.add_argument(
            flag,
            type=int,
            default=default_of(ServeSettings, field),
            help=f"{help_text} (default: %(default)s)",
        )
    limits.add_argument(
        "--timeout",
        type=float,
        default=default_of(ServeSettings, "timeout"),
        help="seconds a request may take, waiting included; 0: no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: %(default)s)",
    )
