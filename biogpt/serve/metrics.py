"""Counters, gauges and histograms in Prometheus' text exposition format, for `GET /metrics`.

A few dozen lines instead of the `prometheus_client` dependency: the server needs three
kinds of series and one output format (`# HELP`, `# TYPE`, then `name{labels} value`
lines; a histogram as cumulative `_bucket{le=...}` lines with `_sum` and `_count`).
Values are observed from the schedulers' threads and read from the server's: one lock.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

# Buckets in seconds. Time to first token includes the wait in the queue and the prompt's
# prefill; a token of the 347M model takes tens of milliseconds on a CPU.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def labels_text(labels: dict[str, str]) -> str:
    """`{a="x",b="y"}` with Prometheus' escapes, or "" without labels."""
    if not labels:
        return ""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


class Histogram:
    """Counts of observations at or below each bucket bound, with their sum."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append(f"{name}_bucket{labels_text({**labels, 'le': bound})} {total}")
        out.append(f"{name}_sum{labels_text(labels)} {self.sum}")
        out.append(f"{name}_count{labels_text(labels)} {total}")
        return out


# Every series: its type and help line.
SERIES: dict[str, tuple[str, str]] = {
    "biogpt_requests_running": ("gauge", "Requests with rows in the running batch."),
    "biogpt_requests_waiting": ("gauge", "Requests queued for the batch."),
    "biogpt_requests_total": ("counter", "Requests answered, by HTTP status."),
    "biogpt_prompt_tokens_total": ("counter", "Prompt tokens of requests that started."),
    "biogpt_generation_tokens_total": ("counter", "Tokens generated (cancelled requests' too)."),
    "biogpt_time_to_first_token_seconds": (
        "histogram",
        "From a request's arrival in the queue to its first token.",
    ),
    "biogpt_time_per_output_token_seconds": ("histogram", "Between two tokens of one request."),
}


class Metrics:
    """The server's series, each labelled by model.

    - `biogpt_requests_running`, `biogpt_requests_waiting` (gauges, read from the
      schedulers when scraped);
    - `biogpt_requests_total{status}`, `biogpt_prompt_tokens_total`,
      `biogpt_generation_tokens_total` (counters);
    - `biogpt_time_to_first_token_seconds`, `biogpt_time_per_output_token_seconds`
      (histograms).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, str], Histogram] = {}
        self.gauges: dict[tuple[str, str], Callable[[], float]] = {}

    def gauge(self, name: str, model: str, read: Callable[[], float]) -> None:
        """Register a gauge read by `read()` at each scrape."""
        self.gauges[(name, model)] = read

    def add(self, name: str, model: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted({"model": model, **labels}.items())))
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + value

    def observe(self, name: str, model: str, value: float) -> None:
        with self.lock:
            if (name, model) not in self.histograms:
                buckets = FIRST_TOKEN_BUCKETS if "first" in name else TOKEN_BUCKETS
                self.histograms[(name, model)] = Histogram(buckets)
            self.histograms[(name, model)].observe(value)

    def render(self) -> str:
        """Every series in the text exposition format (version 0.0.4)."""
        series: dict[str, list[str]] = {name: [] for name in SERIES}
        with self.lock:
            for (name, model), read in self.gauges.items():
                series[name].append(f"{name}{labels_text({'model': model})} {read()}")
            for (name, labels), value in sorted(self.counters.items()):
                series[name].append(f"{name}{labels_text(dict(labels))} {value}")
            for (name, model), histogram in sorted(self.histograms.items()):
                series[name] += histogram.lines(name, {"model": model})
        out = []
        for name, (kind, help_text) in SERIES.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *series[name]]
        return "\n".join(out) + "\n"
