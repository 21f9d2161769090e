"""`biogpt serve`: an OpenAI-compatible HTTP server with continuous batching.

- `scheduler`: one thread per model feeds a `DecodingBatch`; requests join and leave it
  between steps (needs only torch).
- `streaming`: a row's text as it grows, stop strings held back.
- `protocol`: request and response bodies, decoding options, errors in OpenAI's shape.
- `generation`: a request's jobs and their events as a response or a server-sent stream.
- `app`: the FastAPI routes, keys, body limit; `run` starts uvicorn.
- `metrics`: Prometheus' text format; `settings`: the limits (`ServeSettings`).

FastAPI and uvicorn are the optional extra `serve`; only `protocol`, `generation` and
`app` import them, so `import biogpt.serve.scheduler` works without.
"""
