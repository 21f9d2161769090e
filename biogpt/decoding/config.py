"""Decoding options: `GenerationConfig`, the one place each option and its default are written
(the CLI derives its flags from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from biogpt.errors import BioGPTError


@dataclass
class GenerationConfig:
    """Decoding options. Defaults: greedy, at most 64 new tokens, stop at `</s>`."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # `</s>` is forbidden until this many tokens are generated
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off; > 1 discourages tokens already in the row
    no_repeat_ngram_size: int = 0  # 0: off; n: no n-gram may occur twice in a row
    length_penalty: float = 1.0  # beam search: score / new_tokens ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never"
    num_return_sequences: int = 1
    seed: int | None = None  # makes sampling reproducible
    eos_token_id: int = 2
    pad_token_id: int = 1
    # Greedy and sampling: decode with a fixed-shape step compiled by torch.compile (CUDA
    # graphs on a GPU; see biogpt.decoding.static_step). The first call of a shape compiles.
    compile_step: bool = False

    def validate(self) -> None:
        """Refuse option combinations that make no sense, before any work is done."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise BioGPTError(message)

        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            f"min_new_tokens must be in 0..max_new_tokens ({self.max_new_tokens}), "
            f"got {self.min_new_tokens}",
        )
        need(self.num_beams >= 1, f"num_beams must be >= 1, got {self.num_beams}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.repetition_penalty > 0, "repetition_penalty must be > 0")
        need(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0")
        need(self.num_return_sequences >= 1, "num_return_sequences must be >= 1")
        need(
            self.early_stopping in (True, False, "never"),
            f"early_stopping must be true, false or 'never', got {self.early_stopping!r}",
        )
        if self.do_sample:
            need(self.num_beams == 1, "sampling with beams is not supported: use num_beams=1")
        else:
            sampling_only = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
            for name, off in sampling_only.items():
                need(
                    getattr(self, name) == off,
                    f"{name} only applies when sampling: add do_sample=True (--sample) or drop {name}",
                )
            need(
                self.num_return_sequences <= self.num_beams,
                f"num_return_sequences ({self.num_return_sequences}) needs do_sample=True or "
                f"at least as many beams (num_beams={self.num_beams})",
            )
        need(
            not (self.compile_step and self.num_beams > 1),
            "compile_step works with greedy decoding and sampling, not beam search",
        )
        if self.num_beams == 1:
            need(
                self.length_penalty == 1.0 and self.early_stopping is False,
                "length_penalty and early_stopping only apply to beam search (num_beams > 1)",
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
