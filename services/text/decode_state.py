"""Per-request output state: stop rules and incremental detokenizing.

Each request owns one ``DecodeState``, so requests decoded together keep their own stop
strings and text. Sampling itself is batched on the device (``token_sampler.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from services.text.schemas import SamplingParams

FinishReason = Literal["stop", "length"]


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
        eos_ids: set[int],
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
