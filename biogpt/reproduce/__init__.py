"""`biogpt reproduce`: the paper's recipe per task, fine-tune to score, resumable.

    from biogpt.reproduce import reproduce
    results = reproduce("mini", "runs/repro", data="data/", quick=True)

`biogpt.reproduce.settings` holds what a run is asked for and what it changes in the
recipe, `estimate` the time and memory it needs, `stages` each task's fine-tune, predict
and score, and `run` the command that puts them together.
"""

from biogpt.reproduce.run import reproduce
from biogpt.reproduce.settings import Settings

__all__ = ["Settings", "reproduce"]
