"""The numbers the BioGPT paper reports, the one place the report reads them from.

The paper prints percentages (BC5CDR F1 44.98, ...); `biogpt score` prints every metric on
a 0-1 scale, so each number is kept here as the paper prints it and compared divided by
100. They are test-set numbers of BioGPT (347M): another split has nothing to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    """One reported number: `percent` as the paper prints it, for `metric` of `task`."""

    task: str
    metric: str  # the key `biogpt score` prints for it
    percent: float
    setting: str  # how the paper measured it, said beside the number

    @property
    def value(self) -> float:
        """On the 0-1 scale of `biogpt score`."""
        return self.percent / 100


PAPER_SPLIT = "test"
# named, since TASK_NOTES quotes it
PUBMEDQA_RF = PaperNumber(
    "pubmedqa-rf",
    "accuracy",
    78.2,
    "reasoning-free setting: the long answer is part of the input",
)
PAPER_NUMBERS = (
    PaperNumber("bc5cdr", "f1", 44.98, "micro F1 over (document, chemical, disease) MeSH pairs"),
    PaperNumber("kd-dti", "f1", 38.42, "mean over documents of the hard-match F1"),
    PaperNumber("ddi", "f1", 40.76, "mean over documents of the hard-match F1"),
    PUBMEDQA_RF,
    PaperNumber("hoc", "micro_f1", 85.12, "micro F1 over the 11 classes, `empty` included"),
)

# What the report says about a task whose paper number needs a word of context.
TASK_NOTES = {
    "pubmedqa": (
        "Reasoning-required setting (question and contexts only). The paper's "
        f"{PUBMEDQA_RF.percent:g} accuracy was measured in the reasoning-free setting (task "
        f"`{PUBMEDQA_RF.task}`), so this task is compared with no paper number."
    ),
    "pubmedqa-rf": (
        "Reasoning-free setting (the long answer is in the input): the setting of the "
        f"paper's {PUBMEDQA_RF.percent:g} accuracy."
    ),
}


def paper_number(task: str, split: str, metric: str) -> PaperNumber | None:
    """The paper's number for `metric` of `task` on `split`, or None where it has none."""
    if split != PAPER_SPLIT:
        return None
    for number in PAPER_NUMBERS:
        if number.task == task and number.metric == metric:
            return number
    return None
