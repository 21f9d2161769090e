"""What the benchmarks say about the machine they ran on, and the load they put beside it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


@contextlib.contextmanager
def one_core_busy() -> Iterator[None]:
    """A process spinning on one core for the duration: what a neighbour (or a server's own
    threads) does to a machine."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it get going
        yield
    finally:
        spinner.kill()
        spinner.wait()
