"""One request's state inside the engine: its tokens, its KV pages, where it is in its life.

The scheduler, the KV-cache manager, the model runner and the sampler pass ``Sequence`` objects
between them; only the engine thread touches them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from services.text.sampling import DecodeState
from services.text.schemas import SamplingParams


class Phase(enum.Enum):
    WAITING = "waiting"  # queued; holds no KV pages yet
    PREFILL = "prefill"  # pages reserved; prompt chunks still to run
    DECODE = "decode"  # prompt done; one token per step
    DONE = "done"


@dataclass(eq=False)
class Sequence:
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
    slot: int = -1  # row of the sampler's per-request penalty tables
    started: float | None = None  # first scheduled
    first_token_at: float | None = None
    prefill_chunks: int = 0

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
