"""One batch of sequences generated together with ``model.generate``, each followed on its own.

Prompts are left-padded into one batch.  After every decoding step a stopping criterion
(:class:`BatchFollower`) looks at each sequence's new token: it decodes the reply so far, hands
the new text to the sequence's job (held back while it may still turn into a stop string or
ends in half a character), and ends the sequence at an EOS token, a stop string, its own
``max_new_tokens`` or when its client went away.  Sequences that ended are padded by
``generate`` until the whole batch has ended.  A batch of one sequence is exactly
``tuneforge generate``'s computation (same prompt, same generation config), so greedy replies
equal its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

#: what a byte-level tokenizer decodes an incomplete UTF-8 sequence to
REPLACEMENT_CHARACTER = "\ufffd"


@dataclass
class Event:
    """What a job hears from the worker: new ``text`` of choice ``choice``; ``finish_reason``
    (``stop`` or ``length``) and ``completion_tokens`` when the choice ended; ``error`` when the
    generation failed."""

    choice: int
    text: str = ""
    finish_reason: Optional[str] = None
    completion_tokens: int = 0
    error: Optional[str] = None


@dataclass
class Job:
    """One request: ``n`` sequences continuing ``prompt_ids`` with the ``model`` name's adapter.

    ``emit`` is called from the worker thread with each :class:`Event`; it must not block.
    ``cancelled`` is set when the client went away: its sequences end at the next step.
    """

    model: str
    prompt_ids: list
    max_new_tokens: int
    temperature: float
    top_p: float
    emit: Callable[[Event], None]
    n: int = 1
    seed: Optional[int] = None
    stop: list = field(default_factory=list)
    cancelled: bool = False
    id: int = 0

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a batch: same adapter and sampling settings; a seeded job
        shares with no other, so its samples do not depend on who else was asking."""
        if self.temperature == 0:
            return (self.model, "greedy")
        return (self.model, self.temperature, self.top_p, ("seeded", self.id) if self.seed is not None else None)


class SequenceFollower:
    """One sequence of a batch: its tokens so far, the text already sent, and why it ended."""

    def __init__(self, job: Job, choice: int, tokenizer, stop_ids: set):
        self.job, self.choice, self.tokenizer, self.stop_ids = job, choice, tokenizer, stop_ids
        self.ids: list = []
        self.sent = ""
        self.done = False
        self.abandoned = False  # ended because its client went away

    def _text(self) -> tuple[str, Optional[int]]:
        """The reply so far, and where a stop string starts in it (None when none does)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        found = [text.find(stop) for stop in self.job.stop if stop in text]
        return text, (min(found) if found else None)

    def _held_back(self, text: str) -> int:
        """How many trailing characters to keep back: half a character, or the start of a stop string."""
        keep = len(text) - len(text.rstrip(REPLACEMENT_CHARACTER))
        for stop in self.job.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        return keep

    def add(self, token: int) -> None:
        """Take the next token; emit the new text, and the end when the sequence ends."""
        if self.done:
            return
        if self.job.cancelled:
            self.done = self.abandoned = True
            return
        self.ids.append(token)
        text, stop_at = self._text()
        if token in self.stop_ids or stop_at is not None:
            self._finish(text if stop_at is None else text[:stop_at], "stop")
        elif len(self.ids) >= self.job.max_new_tokens:
            self._finish(text, "length")
        else:
            ready = text[:len(text) - self._held_back(text)]
            if ready.startswith(self.sent) and len(ready) > len(self.sent):
                self.job.emit(Event(self.choice, ready[len(self.sent):]))
                self.sent = ready

    def _finish(self, text: str, reason: str) -> None:
        self.done = True
        rest = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.job.emit(Event(self.choice, rest, finish_reason=reason, completion_tokens=len(self.ids)))


def _stopping_criterion(followers: list, prompt_length: int):
    """A ``transformers`` stopping criterion that feeds each step's tokens to the followers and says,
    per sequence, whether it has ended."""
    import torch
    from transformers import StoppingCriteria

    class BatchFollower(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if input_ids.shape[1] > prompt_length:
                for follower, token in zip(followers, input_ids[:, -1].tolist()):
                    follower.add(token)
            return torch.tensor([f.done for f in followers], dtype=torch.bool, device=input_ids.device)

    return BatchFollower()


def generate_batch(registry, jobs: list) -> int:
    """Generate every sequence of ``jobs`` (which share one :attr:`Job.batch_key`) in one ``generate`` call;
    returns how many sequences ended early because their client went away."""
    import torch

    from tuneforge.commands.generate import reply_generation_config

    first = jobs[0]
    served = registry.get(first.model)
    tokenizer, model = served.tokenizer, registry.model
    config = reply_generation_config(model, tokenizer, max_new_tokens=max(j.max_new_tokens for j in jobs),
                                     temperature=first.temperature, top_p=first.top_p)
    stop_ids = set(config.eos_token_id or [])
    followers = [SequenceFollower(job, choice, tokenizer, stop_ids) for job in jobs for choice in range(job.n)]
    prompts = [job.prompt_ids for job in jobs for _ in range(job.n)]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=registry.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=registry.device)
    if first.seed is not None:
        torch.manual_seed(first.seed)
    with torch.inference_mode(), registry.activate(first.model):
        model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                       stopping_criteria=[_stopping_criterion(followers, width)])
    for follower in followers:  # generate stopped on its own (its max_new_tokens): end whatever is open
        if not follower.done and not follower.job.cancelled:
            text, _ = follower._text()
            follower._finish(text, "length")
    return sum(follower.abandoned for follower in followers)
