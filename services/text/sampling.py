"""Per-request decoding state: logits processing, seeded sampling, stop rules, detokenizing.

Each request in a batch owns one ``DecodeState``, so requests decoded together keep their own
temperature, penalties, seed and stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from services.text.schemas import SamplingParams

FinishReason = Literal["stop", "length"]


def process_logits(
    logits: torch.Tensor, params: SamplingParams, prompt_ids: Sequence[int], generated: list[int]
) -> torch.Tensor:
    """Applies penalties, temperature, top-k and top-p to one row of float logits."""
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(generated)), device=logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
    if generated and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(
            torch.tensor(generated, device=logits.device), minlength=logits.shape[-1]
        )[: logits.shape[-1]].to(logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might still become a stop string (or finish a character)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence; more bytes will follow
        held = max(held, 1)
    return held


class DecodeState:
    """One request's progress through decoding."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        max_new_tokens: int,
        seed: int,
        eos_ids: set[int],
        device: torch.device,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.eos_ids = eos_ids
        self.generated: list[int] = []
        self.text = ""
        self.emitted = 0
        # Incremental detokenizing: tokens before _prefix are text already; _prefix.._read
        # were decoded last time, as context for the tokenizer's word-boundary rules.
        self._prefix = 0
        self._read = 0
        self.finish_reason: FinishReason | None = None
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        logits = process_logits(logits, self.params, self.prompt_ids, self.generated)
        if self.params.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def append(self, token: int) -> str:
        """Records a token; returns the text that is now safe to send (may be empty)."""
        self.generated.append(token)
        if token in self.eos_ids:
            self.finish_reason = "stop"
            self._detokenize(self.generated[:-1], final=True)
            return self._flush()
        last = len(self.generated) >= self.max_new_tokens
        searched = len(self.text)
        self._detokenize(self.generated, final=last)
        cut = min(
            (
                i
                for i in (
                    self.text.find(stop, max(0, searched - len(stop) + 1))
                    for stop in self.params.stop
                )
                if i >= 0
            ),
            default=-1,
        )
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
            return self._flush()
        if last:
            self.finish_reason = "length"
            return self._flush()
        safe = len(self.text) - _held_back(self.text, self.params.stop)
        if safe <= self.emitted:
            return ""
        delta = self.text[self.emitted : safe]
        self.emitted = safe
        return delta

    def _detokenize(self, ids: list[int], final: bool) -> None:
        """Extends ``self.text`` by the new tokens' text, decoding only the last few tokens.

        Re-decoding the whole output every step costs O(n) per token. As TGI and vLLM do, this
        decodes from one chunk before the new tokens (so a SentencePiece leading space comes out
        right) and takes the difference. Text ending in U+FFFD is a character whose bytes are
        still coming: it waits for the next token, unless this is the last one.
        """
        decode = self.tokenizer.decode
        before = decode(ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)

    def _flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    @property
    def completion_tokens(self) -> int:
        return len(self.generated)
