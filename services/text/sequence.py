"""One request's state inside the engine: its tokens, its KV pages, where it is in its life.

The scheduler, the KV-cache manager, the model runner and the sampler pass ``SeqState`` objects
between them; only the engine thread touches them. Two indices, two names: ``row`` is the
request's row in the sampler's tables (and in the engine's per-row last tokens); a ``slot`` is
a flat index into the KV cache (page * page_size + offset, ``KVCacheManager.slot``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.text.decode_state import DecodeState
from services.text.schemas import SamplingParams

if TYPE_CHECKING:
    from services.text.request import GenerationRequest


class Phase(enum.Enum):
    WAITING = "waiting"  # queued; holds no KV pages yet
    PREFILL = "prefill"  # pages reserved; prompt chunks still to run
    DECODE = "decode"  # prompt done; one token per step
    DONE = "done"


@dataclass(eq=False)
class SeqState:
    handle: Any  # the RequestHandle of the caller (None in warm-up)
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    seed: int
    adapter_index: int  # 0 = the base model; k = the k-th unmerged adapter
    state: DecodeState
    arrival: float
    phase: Phase = Phase.WAITING
    # Tokens whose K/V are in the cache (prompt tokens first, then generated ones).
    num_cached: int = 0
    # Generated tokens the engine has handed out (one step behind the device).
    output_ids: list[int] = field(default_factory=list)
    # Tokens asked of the sampler so far, handed out or still on the device.
    sampled: int = 0
    pages: list[int] = field(default_factory=list)
    # The prefix cache: the chained key of every full prompt page (computed once, when the
    # request first asks to be admitted), the prompt tokens it found cached at admission,
    # and how many of its leading pages are dealt with: hit, or hashed once the chunk that
    # fills them was planned (a page another request already holds the key of stays private).
    page_keys: list[bytes] | None = None
    cached_tokens: int = 0
    hashed_pages: int = 0
    row: int = -1  # the sampler's row for this request (its penalty tables, its last token)
    started: float | None = None  # first scheduled
    first_token_at: float | None = None
    prefill_chunks: int = 0

    @classmethod
    def of(
        cls,
        handle: Any,
        request: GenerationRequest,
        adapter_index: int,
        tokenizer: Any,
        eos_ids: set[int],
    ) -> SeqState:
        """A waiting request, with a fresh decode state of its own."""
        r = request
        state = DecodeState(tokenizer, r.prompt_ids, r.params, r.max_new_tokens, eos_ids)
        return cls(
            handle,
            r.prompt_ids,
            r.params,
            r.max_new_tokens,
            r.seed,
            adapter_index,
            state,
            r.arrival,
        )

    def take(self, token: int, now: float) -> str:
        """A token the device made for this request; returns its new text (what may still
        become a stop string is held back)."""
        self.output_ids.append(token)
        if self.first_token_at is None:
            self.first_token_at = now
        return self.state.append(token)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def reserved_tokens(self) -> int:
        """The most tokens this request can ever hold in the cache."""
        return self.prompt_len + self.max_new_tokens

    @property
    def remaining_prompt(self) -> int:
        return self.prompt_len - self.num_cached
