"""`biogpt serve`: an OpenAI-compatible HTTP server with continuous batching.

- `scheduler`: one thread per model feeds a `DecodingBatch`; requests join and leave it
  between steps (needs only torch).
- `streaming`: a row's text as it grows, stop strings held back.
- `protocol`: request and response bodies, decoding options, errors in OpenAI's shape.
- `generation`: a request's jobs and their events as a response or a server-sent stream.
- `app`: the FastAPI routes, keys, body limit; `run` starts uvicorn.
- `task_api`: a fine-tuned model's task (`/v1/tasks/extract`, `answer`, `classify`,
  `entities`), through the same scheduler.
- `page`: the web page at `/`, from the files in `static/` (no network needed).
- `metrics`: Prometheus' text format; `settings`: the limits (`ServeSettings`).

FastAPI and uvicorn are the optional extra `serve`; only `protocol`, `generation`,
`task_api`, `page` and `app` import them, so `import biogpt.serve.scheduler` works without.
"""
