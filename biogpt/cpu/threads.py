"""How many threads a decoding step runs on, chosen by measuring the steps themselves.

A step's threads meet at a barrier after every matrix product, a few hundred times a step.
On a quiet machine every thread has a core and more threads stream the weights faster; but
when another process holds one of the cores, the thread that shares it runs only part of
the time, and each barrier waits for it: the step then runs several times slower than on
one thread fewer. Which count is best depends on what else the machine is doing at the
moment, so it is measured rather than configured:

- the step runs on the count that is fastest so far; at first, on as many threads as
  there are cores that nothing else is running on at that moment (`first_guess`), and the
  first probe comes after the first step;
- now and then one step runs on each other candidate count: a probe. A probe that finds a
  faster count switches to it; one that confirms the current count at least doubles the
  time to the next probe, and sets it far enough away that the probes' extra time stays
  under `PROBE_SHARE` of the steps' (a count 4x slower than the current one costs 3 steps'
  time a probe, so probes come at least 150 steps apart), up to `MAX_INTERVAL` steps;
- two steps in a row much slower than the current count's recent steps (the machine got
  busier) start a probe at once.

The tokens do not depend on the choice: each output of the compiled step is computed by one
thread, in a fixed order, whatever the count. `benchmarks/generate.py --fixed-threads`
races the choice against every fixed count, on a quiet machine and with `--busy`.
"""

from __future__ import annotations

import os
import statistics
import weakref
from collections import deque
from typing import Any

# Steps between probes: from MIN_INTERVAL after a switch, doubling up to MAX_INTERVAL while
# probes confirm the current count.
MIN_INTERVAL = 32
MAX_INTERVAL = 1024
# The share of a steady run's time that probes of slower counts may take.
PROBE_SHARE = 0.02
# Steps this much slower than the current count's recent ones, SLOW_STEPS in a row, start a
# probe at once (one slow step is more often noise than a change of load).
SLOWDOWN = 1.5
SLOW_STEPS = 2
# A count's time is the median of its last RECENT steps: one spike does not move it.
RECENT = 5
# BIOGPT_THREADS=fixed turns the choice off: every step takes torch.get_num_threads().
ENVIRONMENT = "BIOGPT_THREADS"


def candidates(most: int) -> list[int]:
    """The thread counts worth trying with `most` threads at hand, most first: all of them,
    one fewer (a neighbour holding one core), half, and one."""
    return sorted({most, max(most - 1, 1), max(most // 2, 1), 1}, reverse=True)


def first_guess(most: int) -> int:
    """The largest candidate count no larger than the cores free right now: the machine's
    cores less the other threads the kernel has running or ready to run this instant
    (/proc/loadavg's fourth field counts the caller too). `most` where that cannot be read."""
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return most
    free = (os.cpu_count() or most) - max(runnable - 1, 0)
    return max([count for count in candidates(most) if count <= free], default=1)


class ThreadChooser:
    """Picks each step's thread count from the measured times of earlier steps.

    threads = chooser.pick()
    ... run the step on `threads` threads, taking `seconds` ...
    chooser.record(threads, seconds)
    """

    def __init__(self, most: int, start: int | None = None) -> None:
        self.most = most
        self.counts = candidates(most)
        self.current = most if start is None else start
        self.recent: dict[int, deque[float]] = {}  # count -> its last step times (s)
        self.probing: list[int] = []  # counts still to try in the probe under way
        self.interval = 1  # the first probe comes early: the load is unknown
        self.since_probe = 0
        self.slow_steps = 0  # slow steps in a row on the current count
        self.steps = 0
        self.used: dict[int, int] = {}  # count -> steps run on it

    def pick(self) -> int:
        """The thread count for the next step."""
        return self.probing[0] if self.probing else self.current

    def settled(self) -> int:
        """The count the steps have settled on, probes aside: for work between steps."""
        return self.current

    def time_of(self, threads: int) -> float:
        """The typical time of a step on `threads` threads lately (inf if never measured)."""
        recent = self.recent.get(threads)
        return statistics.median(recent) if recent else float("inf")

    def record(self, threads: int, seconds: float) -> None:
        """Account a step that ran on `threads` threads in `seconds`."""
        self.steps += 1
        self.used[threads] = self.used.get(threads, 0) + 1
        if self.probing and threads == self.probing[0]:
            # A probe's step replaces what is likely stale: the load may have changed.
            self.recent[threads] = deque([seconds], maxlen=RECENT)
            self.probing.pop(0)
            if not self.probing:
                self._decide()
            return
        typical = self.time_of(threads)
        self.recent.setdefault(threads, deque(maxlen=RECENT)).append(seconds)
        self.since_probe += 1
        self.slow_steps = self.slow_steps + 1 if seconds > SLOWDOWN * typical else 0
        if self.slow_steps >= SLOW_STEPS:  # the load changed: only the slow steps tell of it
            recent = self.recent[threads]
            self.recent[threads] = deque(list(recent)[-SLOW_STEPS:], maxlen=RECENT)
        due = self.since_probe >= self.interval or self.slow_steps >= SLOW_STEPS
        if len(self.counts) > 1 and due:
            self.probing = [count for count in self.counts if count != self.current]
            self.slow_steps = 0

    def _decide(self) -> None:
        best = min(self.counts, key=self.time_of)
        if best != self.current:
            self.current, self.interval = best, MIN_INTERVAL
            self.recent[best] = deque([self.time_of(best)], maxlen=RECENT)
        else:
            # What one probe costs, in steps of the current count: each other count's extra.
            now = self.time_of(self.current)
            cost = sum(self.time_of(count) / now - 1 for count in self.counts if count != best)
            spread = max(2 * self.interval, MIN_INTERVAL, round(cost / PROBE_SHARE))
            self.interval = min(spread, MAX_INTERVAL)
        self.since_probe = 0


class FixedThreads:
    """Every step on `most` threads: what BIOGPT_THREADS=fixed asks for."""

    def __init__(self, most: int) -> None:
        self.most = most

    def pick(self) -> int:
        return self.most

    def settled(self) -> int:
        return self.most

    def record(self, threads: int, seconds: float) -> None:
        pass


# One chooser per model, thread budget and policy: the machine's load outlives a `generate`
# call, so what was measured in one call serves the next (a server's steps, a task's batches).
_CHOOSERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, bool], ThreadChooser | FixedThreads]] = (
    weakref.WeakKeyDictionary()
)


def adaptive() -> bool:
    """Whether steps choose their thread count (the default), or take them all
    (`BIOGPT_THREADS=fixed` in the environment, read at each call)."""
    return os.environ.get(ENVIRONMENT, "adaptive") != "fixed"


def chooser_for(owner: Any, most: int) -> ThreadChooser | FixedThreads:
    """The chooser of `owner`'s steps (a model) with `most` threads at hand."""
    key = (most, adaptive())
    per_owner = _CHOOSERS.setdefault(owner, {})
    if key not in per_owner:
        per_owner[key] = ThreadChooser(most, first_guess(most)) if key[1] else FixedThreads(most)
    return per_owner[key]
