"""Continuous batching: one thread owns a model and a `DecodingBatch`, and requests join and
leave the running batch between steps.

    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    scheduler.start()
    scheduler.submit(Job(prompt_ids, config, on_event=events.put))   # from any thread
    ...                                # events: Token, Finished (one per choice), Done
    job.cancel()                       # its rows leave at the next step

A `Job` is one prompt with `n` choices (`num_return_sequences`); its rows join together and
each leaves when it ends. Every step the loop
1. lets waiting jobs join, first come first served, while their rows fit in
   `max_batch_size` (`DecodingBatch.add` runs the prompt into the cache; short one-choice
   prompts that join together share one pass over the weights, `DecodingBatch.add_each`);
2. picks each job's next tokens from its rows' logits, with the library's rules
   (`biogpt.decoding.logits`), in the order and with the generator that `generate` uses;
3. drops the rows that ended (`</s>`, a stop string, the token budget), were cancelled or
   ran past their deadline (`DecodingBatch.keep`);
4. feeds the chosen tokens of the others (`DecodingBatch.step`).

Why a greedy completion is token-identical to `complete` on the same prompt alone: a job
joins with its own prompt, unpadded, computed as `complete` computes it (alone, or packed
with others by `add_each`, which gives each prompt the result it gets alone); the step computes each
row as it would alone while the batch holds at most 8 rows (`DecodingBatch`'s fused step,
bit for bit; a server made for more rows takes the op-by-op step, whose matmuls may round
a row differently beside others); and the job's tokens are chosen as in
`biogpt.decoding.greedy`. A seeded sampling job draws from its own generator over its own
live rows, which is what `generate` does for one prompt, so it repeats `complete` too.

Beam search (`num_beams > 1`) runs through the library's `generate` as a job of its own,
in this thread, while the running rows wait: simpler than beams sharing the batch, and it
keeps one thread in charge of the model (a second thread could repack the model's layers
under a running step).

Log-probabilities reported for tokens are the model's own (log-softmax of the raw logits),
not of the distribution after temperature or top-p.

Shapes: N rows in the batch, V vocabulary, n choices of a job, L prompt + new tokens.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from biogpt.decoding.completion import StopStrings
from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.logits import process_logits, sampling_filter
from biogpt.decoding.search import generate
from biogpt.decoding.steps import DecodingBatch, prepare_model
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT
from biogpt.serve.streaming import RowText, cut_at_stop
from biogpt.tokenizer import Tokenizer

# --------------------------------------------------------------------------------------------
# What a job hands back, as events
# --------------------------------------------------------------------------------------------


@dataclass
class Token:
    """A new token of choice `choice`. `text` is the text it makes final ("" while a word
    or a possible stop string is still open); `top` the likeliest alternatives, if asked."""

    choice: int
    token: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass
class Finished:
    """Choice `choice` ended: `reason` is "stop" (`</s>` or a stop string) or "length";
    `text` its whole completion, as `complete` gives it; `tokens` its new tokens (without
    `</s>`); `text_tail` what the `Token` chunks had not sent yet."""

    choice: int
    reason: str
    text: str
    tokens: list[int]
    text_tail: str


@dataclass
class Done:
    """The job is over: every choice finished (`error` None), or it failed: `error` says
    why and `status` is the HTTP status that fits (504 past its deadline, 500 otherwise)."""

    error: str | None = None
    status: int = 200


Event = Token | Finished | Done
EventSink = Callable[[Event], None]


@dataclass(eq=False)
class Job:
    """One prompt to continue `config.num_return_sequences` times.

    `prompt_ids` start with `</s>` (`Tokenizer.encode`); `stop` ends a choice at any of these
    strings; `logprobs` asks for each token's log-probability and `top_logprobs` for that
    many alternatives; `deadline` (a `time.monotonic()` instant) ends the job with an error
    when passed. `on_event` is called from the scheduler's thread: it must be quick.
    """

    prompt_ids: list[int]
    config: GenerationConfig
    on_event: EventSink
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    deadline: float | None = None
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set from any thread; the scheduler drops the job's rows

    @property
    def n(self) -> int:
        return self.config.num_return_sequences

    def cancel(self) -> None:
        """Drop the job: waiting, it never runs; running, its rows leave at the next step."""
        self.cancelled = True


class QueueFull(BioGPTError):
    """The scheduler's queue holds `max_queue` jobs already."""


@dataclass
class Timing:
    """What the scheduler measured, for metrics: called from its thread."""

    first_token: Callable[[float], None] = lambda seconds: None  # submit -> first token
    next_token: Callable[[float], None] = lambda seconds: None  # between tokens of a row
    prompt_tokens: Callable[[int], None] = lambda count: None  # a job's prompt, as it joins
    new_tokens: Callable[[int], None] = lambda count: None  # tokens chosen, each step


# --------------------------------------------------------------------------------------------
# A running job: its rows' tokens so far and how it chooses the next
# --------------------------------------------------------------------------------------------


class Running:
    """A job in the batch. `tokens` (n, L) holds each choice's prompt and new tokens, as
    `greedy_or_sample` keeps them; `live` the choices still decoding, in cache order."""

    def __init__(self, job: Job, tokenizer: Tokenizer, device: torch.device) -> None:
        self.job = job
        self.tokenizer = tokenizer
        config = job.config
        prompt = torch.tensor(job.prompt_ids, dtype=torch.long, device=device)
        self.prompt_length = len(job.prompt_ids)
        total = self.prompt_length + config.max_new_tokens
        self.tokens = torch.full(
            (job.n, total), config.pad_token_id, dtype=torch.long, device=device
        )
        self.tokens[:, : self.prompt_length] = prompt
        self.real = torch.ones(job.n, total, dtype=torch.bool, device=device)
        self.live = list(range(job.n))
        self.step = 0  # new tokens so far
        self.generator: torch.Generator | None = None
        if config.do_sample:
            self.generator = torch.Generator(device=device)
            # Unseeded, a fresh seed from the system: the global torch seed stays untouched.
            self.generator.manual_seed(
                config.seed if config.seed is not None else secrets.randbits(63)
            )
        self.stop = StopStrings(tokenizer, job.stop, self.prompt_length) if job.stop else None
        self.text = [RowText(tokenizer, job.stop) for _ in range(job.n)]
        self.last_token_at: float | None = None

    def prompt_rows(self) -> tuple[Tensor, Tensor]:
        """The prompt as n identical rows (n, T) and their (all real) mask, to join the batch."""
        ids = self.tokens[:, : self.prompt_length]
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def choose(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Next tokens (k,) of the live choices from their logits (k, V), as `greedy_or_sample`
        picks them; and which of them end now (k,)."""
        config = self.job.config
        live = torch.tensor(self.live, device=logits.device)
        cur = self.prompt_length + self.step
        scores = process_logits(
            logits, self.tokens[live, :cur], self.real[live, :cur], self.step, config
        )
        if config.do_sample:
            scores = sampling_filter(scores, config)
            chosen = torch.multinomial(scores.softmax(dim=-1), 1, generator=self.generator)[:, 0]
        else:
            chosen = scores.argmax(dim=-1)
        self.tokens[live, cur] = chosen
        done = chosen == config.eos_token_id
        if self.stop is not None:
            done |= self.stop(self.tokens[live, : cur + 1])
        self.step += 1
        if self.step == config.max_new_tokens:
            done[:] = True
        return chosen, done

    def emit(self, logits: Tensor, chosen: Tensor, done: Tensor, timing: Timing) -> None:
        """Send the events of this step's tokens; forget the choices that ended."""
        job = self.job
        now = time.monotonic()
        if self.last_token_at is None:
            timing.first_token(now - job.submitted)
        else:
            timing.next_token(now - self.last_token_at)
        self.last_token_at = now
        logprobs = top = None
        if job.logprobs:
            logprobs = logits.log_softmax(dim=-1)  # the model's own distribution (k, V)
            if job.top_logprobs:
                top = logprobs.topk(job.top_logprobs, dim=-1)
        eos = job.config.eos_token_id
        for k, (choice, token, ended) in enumerate(
            zip(self.live, chosen.tolist(), done.tolist(), strict=True)
        ):
            if token != eos:
                event = Token(choice, token, self.text[choice].push(token))
                if logprobs is not None:
                    event.logprob = float(logprobs[k, token])
                if top is not None:
                    event.top = list(
                        zip(top.indices[k].tolist(), top.values[k].tolist(), strict=True)
                    )
                job.on_event(event)
            if ended:
                job.on_event(self.finished(choice))
        timing.new_tokens(len(self.live))
        self.live = [c for c, ended in zip(self.live, done.tolist(), strict=True) if not ended]
        if not self.live:
            job.on_event(Done())

    def finished(self, choice: int) -> Finished:
        """The end of `choice`: its text and tokens as `complete` gives them."""
        new = self.tokens[choice, self.prompt_length : self.prompt_length + self.step].tolist()
        tail = self.text[choice].finish()
        return finish_of(self.tokenizer, choice, new, self.job, tail)


def finish_of(tokenizer: Tokenizer, choice: int, new: list[int], job: Job, tail: str) -> Finished:
    """The `Finished` event of a choice whose new tokens are `new`: cut at `</s>` and at the
    first stop string, as `complete` cuts them."""
    reason = "length"
    if job.config.eos_token_id in new:
        new = new[: new.index(job.config.eos_token_id)]
        reason = "stop"
    while new and new[-1] == job.config.pad_token_id:  # beam search pads ended hypotheses
        new.pop()
    text, stopped = cut_at_stop(tokenizer.decode(new), job.stop)
    return Finished(choice, "stop" if stopped else reason, text, new, tail)


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


class Scheduler:
    """Feeds one model's `DecodingBatch` from a queue of jobs, in a thread of its own."""

    def __init__(
        self,
        model: BioGPT,
        tokenizer: Tokenizer,
        max_batch_size: int = 8,
        max_queue: int = 64,
        timing: Timing | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 0:
            raise BioGPTError("max_batch_size must be >= 1 and max_queue >= 0")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.timing = timing or Timing()
        self.device = next(model.parameters()).device
        self._waiting: deque[Job] = deque()
        self._running: list[Running] = []  # jobs in the batch, in the order they joined
        self._rows: list[Running] = []  # the job of each live row, in cache order
        self._logits: Tensor | None = None  # (N, V): next-token logits of the live rows
        self._batch: DecodingBatch | None = None
        self._joining: list[Job] = []  # taken from the queue, not yet in the batch nor done
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    # --- What other threads call --------------------------------------------------------------

    @property
    def running(self) -> int:
        """Jobs with rows in the batch."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs in the queue."""
        return len(self._waiting)

    def start(self) -> None:
        """Start the thread that owns the model (packing it for the batch first)."""
        with torch.inference_mode():
            self._batch = DecodingBatch(self.model, expected_rows=self.max_batch_size)
        self._thread = threading.Thread(target=self._loop, name="biogpt-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; `QueueFull` when `max_queue` jobs wait already."""
        if job.n > self.max_batch_size and job.config.num_beams == 1:
            raise BioGPTError(
                f"n={job.n} is more than the {self.max_batch_size} rows a batch holds"
            )
        with self._lock:
            if self._closing:
                raise BioGPTError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already; retry later")
            job.submitted = time.monotonic()
            self._waiting.append(job)
            self._lock.notify()

    def close(self) -> None:
        """Stop the thread; jobs not finished get a `Done` with an error."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
        for job in [*self._waiting, *(r.job for r in self._running)]:
            job.on_event(Done("the server is shutting down", 503))
        self._waiting.clear()
        self._running.clear()

    # --- The loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._closing and not self._waiting and not self._rows:
                        self._lock.wait()
                    if self._closing:
                        return
                    self._joining = self._take_waiting()
                try:
                    self._join_all(list(self._joining))
                    if self._rows:
                        self._step()
                except Exception as err:  # a bug or out of memory: fail the jobs, keep serving
                    self._fail_all(f"internal error: {type(err).__name__}: {err}")
                    # a later job gets a fresh batch; if even that fails, the next step says so

    def _take_waiting(self) -> list[Job]:
        """The waiting jobs that join now, in order: while their rows fit. A beam search job
        is taken alone, when it is first in the queue."""
        taken: list[Job] = []
        rows = len(self._rows)
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            if job.config.num_beams > 1:
                if not taken:
                    taken.append(self._waiting.popleft())
                break
            if rows + job.n > self.max_batch_size:
                break
            taken.append(self._waiting.popleft())
            rows += job.n
        return taken

    def _join_all(self, jobs: list[Job]) -> None:
        """Jobs join in order; one-choice prompts that pack, one after another, join in one
        pass over the weights (`DecodingBatch.add_each`: each as it runs alone)."""
        assert self._batch is not None
        group: list[Job] = []
        for job in jobs:
            if job.n == 1 and job.config.num_beams == 1 and self._batch.packs(len(job.prompt_ids)):
                group.append(job)
                continue
            self._join_packed(group)
            group = []
            self._join(job)
        self._join_packed(group)

    def _join_packed(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        assert self._batch is not None
        running = [Running(job, self.tokenizer, self.device) for job in jobs]
        prompts = [r.tokens[0, : r.prompt_length] for r in running]
        budgets = [job.config.max_new_tokens for job in jobs]
        self._joined(running, self._batch.add_each(prompts, budgets))

    def _join(self, job: Job) -> None:
        if job.config.num_beams > 1:
            self._run_beam_search(job)
            return
        assert self._batch is not None
        running = Running(job, self.tokenizer, self.device)
        ids, real = running.prompt_rows()
        logits = self._batch.add(ids, real, budget=job.config.max_new_tokens)
        self._joined([running], logits)

    def _joined(self, running: list[Running], logits: Tensor) -> None:
        """The jobs `running` joined the batch, in order, with these logits (their rows')."""
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])
        for r in running:
            self._rows += [r] * r.job.n
            self._running.append(r)
            self._joining.remove(r.job)
            self.timing.prompt_tokens(len(r.job.prompt_ids))

    def _step(self) -> None:
        """Choose every live row's token, drop the rows that end, feed the others."""
        assert self._batch is not None and self._logits is not None
        now = time.monotonic()
        chosen = torch.zeros(len(self._rows), dtype=torch.long, device=self._logits.device)
        keep = torch.ones(len(self._rows), dtype=torch.bool)
        still: list[Running] = []
        for running in self._running:
            # a job's rows joined together and keep their order: one contiguous span
            at = [i for i, r in enumerate(self._rows) if r is running]
            span = slice(at[0], at[-1] + 1)
            job = running.job
            if job.cancelled or (job.deadline is not None and now > job.deadline):
                keep[span] = False
                if not job.cancelled:
                    job.on_event(Done("the request ran past the server's timeout", 504))
                continue
            tokens, done = running.choose(self._logits[span])
            chosen[span] = tokens
            keep[span] = ~done.cpu()
            running.emit(self._logits[span], tokens, done, self.timing)
            if running.live:
                still.append(running)
        self._running = still
        if not bool(keep.all()):
            index = keep.nonzero()[:, 0]
            self._batch.keep(index)
            self._rows = [self._rows[i] for i in index.tolist()]
            chosen = chosen[index.to(chosen.device)]
        self._logits = self._batch.step(chosen) if self._rows else None

    def _run_beam_search(self, job: Job) -> None:
        """Beam search through `generate`, as a job of its own (see the module docstring)."""
        self._joining.remove(job)  # it ends here, with an answer or an error
        if job.cancelled:
            return
        try:
            self._beam_search(job)
        except Exception:
            job.on_event(Done("internal error in beam search", 500))
            raise

    def _beam_search(self, job: Job) -> None:
        try:
            ids = torch.tensor([job.prompt_ids], device=self.device)
            stop = StopStrings(self.tokenizer, job.stop, ids.shape[1]) if job.stop else None
            out = generate(self.model, ids, None, job.config, stop=stop)
        except BioGPTError as err:  # options `generate` refuses: this job's fault alone
            job.on_event(Done(str(err), 400))
            return
        finally:
            # the beams' batch may have packed the model for its own rows
            prepare_model(self.model, self.max_batch_size)
        self.timing.first_token(time.monotonic() - job.submitted)
        for choice, row in enumerate(out.sequences.tolist()):
            new = row[out.prompt_length :]
            finished = finish_of(self.tokenizer, choice, new, job, "")
            finished.text_tail = finished.text
            job.on_event(finished)
        self.timing.prompt_tokens(len(job.prompt_ids))
        self.timing.new_tokens(int(out.sequences.shape[1] - out.prompt_length) * job.n)
        job.on_event(Done())

    def _fail_all(self, message: str) -> None:
        """After an error in a step or a join: every running job ends with it, and so does
        every job taken from the queue that had not joined yet; the batch starts anew."""
        for job in [*(r.job for r in self._running), *self._joining]:
            job.on_event(Done(message, 500))
        self._running, self._rows, self._logits, self._joining = [], [], None, []
        try:
            self._batch = DecodingBatch(self.model, expected_rows=self.max_batch_size)
        except Exception:  # the model itself is broken: the next job fails on the old batch
            return
