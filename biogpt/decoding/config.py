"""Decoding options: `GenerationConfig`, the one place each option and its default are written
(the CLI derives its flags from these fields)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from biogpt.errors import BioGPTError

MAX_DRAFT = 7  # draft tokens a pass: with the token before them, the gemv kernel's 8 rows


@dataclass
class GenerationConfig:
    """Decoding options. Defaults: greedy, at most 64 new tokens, stop at `</s>`."""

    # `help` is what `biogpt generate --help` shows for the field's flag (biogpt.cli.common).
    max_new_tokens: int = field(default=64, metadata={"help": "at most this many new tokens"})
    min_new_tokens: int = field(
        default=0, metadata={"help": "forbid </s> until this many new tokens are generated"}
    )
    do_sample: bool = field(
        default=False, metadata={"help": "sample instead of taking the likeliest token"}
    )
    num_beams: int = field(default=1, metadata={"help": "beam search with this many beams"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest; 0: all"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass; 1.0: off"})
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "> 1 discourages tokens already in the row; 1.0: off"}
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "n: no n-gram may occur twice in a row; 0: off"}
    )
    length_penalty: float = field(
        default=1.0, metadata={"help": "beam search: score / new_tokens ** length_penalty"}
    )
    early_stopping: bool | str = field(
        default=False,
        metadata={
            "help": "beam search: stop when num_beams hypotheses are done (true), when none "
            "can improve (false), or only at max length (never)"
        },
    )
    num_return_sequences: int = field(default=1, metadata={"help": "completions per prompt"})
    seed: int | None = field(
        default=None, metadata={"help": "random seed: the same seed gives the same samples"}
    )
    eos_token_id: int = field(default=2, metadata={"help": "the token that ends a sequence"})
    pad_token_id: int = field(default=1, metadata={"help": "the token that fills short rows"})
    compile_step: bool = field(
        default=False,
        metadata={
            # See biogpt.decoding.static_step. The first call of a shape compiles.
            "help": "greedy/sampling: decode with a torch.compile'd fixed-shape step (CUDA "
            "graphs on a GPU; the first call compiles, so it pays off on long or repeated runs)"
        },
    )
    prompt_lookup: int = field(
        default=0,
        metadata={
            # See biogpt.decoding.speculative: exact only where a pass of several tokens
            # rounds as one-token steps do (the CPU's fused step, or the kernel's layers
            # op by op); elsewhere decoding keeps one token a step.
            "help": "greedy, one prompt: draft up to this many tokens (1-7) from the prompt "
            "and the answer so far and verify them in one pass (the same tokens; decoding "
            "stays one token a step where that pass cannot match it exactly); 0: off"
        },
    )

    def validate(self, flags: Mapping[str, str] | None = None) -> None:
        """Refuse option combinations that make no sense, before any work is done.

        Messages name each option as its field (`top_p`, `do_sample=True`), or as `flags`
        spells it for the caller's users ({"top_p": "--top-p", "do_sample": "--sample"}).
        """
        flags = flags or {}

        def name(option: str) -> str:
            return flags.get(option, option)

        def setting(option: str, value: object) -> str:
            if option not in flags:
                return f"{option}={value}"
            return flags[option] if value is True else f"{flags[option]} {value}"

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise BioGPTError(message)

        def at_least(option: str, low: int) -> None:
            value = getattr(self, option)
            need(value >= low, f"{name(option)} must be >= {low}, got {value}")

        at_least("max_new_tokens", 1)
        need(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            f"{name('min_new_tokens')} must be in 0..{name('max_new_tokens')} "
            f"({self.max_new_tokens}), got {self.min_new_tokens}",
        )
        at_least("num_beams", 1)
        at_least("top_k", 0)
        at_least("no_repeat_ngram_size", 0)
        at_least("num_return_sequences", 1)
        # `not x > 0` and `not 0 < x` refuse NaN too.
        for option in ("temperature", "repetition_penalty"):
            value = getattr(self, option)
            need(value > 0 and math.isfinite(value), f"{name(option)} must be > 0, got {value}")
        need(0 < self.top_p <= 1, f"{name('top_p')} must be in (0, 1], got {self.top_p}")
        need(
            self.seed is None or 0 <= self.seed < 2**63,
            f"{name('seed')} must be in 0..2**63-1, got {self.seed}",
        )
        need(
            math.isfinite(self.length_penalty),
            f"{name('length_penalty')} must be a finite number, got {self.length_penalty}",
        )
        need(
            self.early_stopping in (True, False, "never"),
            f"{name('early_stopping')} must be true, false or 'never', got {self.early_stopping!r}",
        )
        if self.do_sample:
            need(
                self.num_beams == 1,
                f"sampling ({setting('do_sample', True)}) with beams is not supported: use "
                f"{setting('num_beams', 1)}",
            )
        else:
            sampling_only = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
            for option, off in sampling_only.items():
                need(
                    getattr(self, option) == off,
                    f"{name(option)} only applies when sampling: add "
                    f"{setting('do_sample', True)} or drop {name(option)}",
                )
            need(
                self.num_return_sequences <= self.num_beams,
                f"{setting('num_return_sequences', self.num_return_sequences)} needs "
                f"{setting('do_sample', True)} or at least as many beams "
                f"({setting('num_beams', self.num_beams)})",
            )
        need(
            0 <= self.prompt_lookup <= MAX_DRAFT,
            f"{name('prompt_lookup')} must be in 0..{MAX_DRAFT} (the draft and the token "
            f"before it share one pass of at most {MAX_DRAFT + 1} rows), got {self.prompt_lookup}",
        )
        need(
            self.prompt_lookup == 0 or (not self.do_sample and self.num_beams == 1),
            f"{name('prompt_lookup')} works with greedy decoding, not sampling or beam search",
        )
        need(
            not (self.compile_step and self.num_beams > 1),
            f"{name('compile_step')} works with greedy decoding and sampling, not beam search",
        )
        if self.num_beams == 1:
            need(
                self.length_penalty == 1.0 and self.early_stopping is False,
                f"{name('length_penalty')} and {name('early_stopping')} only apply to beam "
                f"search ({name('num_beams')} > 1)",
            )

    @classmethod
    def from_options(cls, base: GenerationConfig | None = None, **options) -> GenerationConfig:
        """A config from keyword options, with a clear error for a misspelt one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise BioGPTError(
                f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return replace(base or cls(), **options)
