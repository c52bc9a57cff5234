"""The KV cache: fixed pages allocated once at start-up, handed to requests and taken back.

The cache is one tensor per layer, ``[pages, page_size, kv_heads, head_dim]`` for keys and one
for values, allocated before the first request so that serving never allocates KV memory. A
request gets all the pages its prompt plus ``max_new_tokens`` can need when it is admitted
(so it can never run out half-way and no preemption is needed), and gives them back the
moment it finishes or is cancelled. Page 0 is never handed out: padded rows of a CUDA graph
write there.

How many pages: an explicit token count, or (on CUDA) a share of the card's memory, measured
after the weights are loaded and a full-size prefill has run, as vLLM's
``gpu_memory_utilization`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype.itemsize


class KVCacheManager:
    def __init__(
        self, shape: CacheShape, num_pages: int, page_size: int, device: torch.device
    ) -> None:
        if num_pages < 2:
            raise ValueError("the KV cache needs at least 2 pages (one is reserved)")
        self.shape = shape
        self.page_size = page_size
        self.num_pages = num_pages
        self.device = device
        size = (num_pages, page_size, shape.kv_heads, shape.head_dim)
        self.keys = [
            torch.zeros(size, dtype=shape.dtype, device=device) for _ in range(shape.layers)
        ]
        self.values = [
            torch.zeros(size, dtype=shape.dtype, device=device) for _ in range(shape.layers)
        ]
        self._free = list(range(num_pages - 1, 0, -1))  # page 0 is the scratch page
        logger.info(
            "kv cache: %d pages of %d tokens (%d tokens, %.2f GiB) on %s",
            num_pages - 1,
            page_size,
            self.capacity_tokens,
            num_pages * page_size * shape.bytes_per_token / 2**30,
            device,
        )

    @property
    def capacity_tokens(self) -> int:
        return (self.num_pages - 1) * self.page_size

    @property
    def used_pages(self) -> int:
        return self.num_pages - 1 - len(self._free)

    @property
    def usage(self) -> float:
        return self.used_pages / max(1, self.num_pages - 1)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def can_allocate(self, tokens: int) -> bool:
        return self.pages_for(tokens) <= len(self._free)

    def allocate(self, tokens: int) -> list[int]:
        n = self.pages_for(tokens)
        if n > len(self._free):
            raise RuntimeError(f"kv cache: {n} pages asked, {len(self._free)} free")
        pages = self._free[-n:]
        del self._free[-n:]
        return pages[::-1]

    def free(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))
        pages.clear()

    def slot(self, pages: list[int], position: int) -> int:
        """The flat cache index where the token at ``position`` of a sequence lives."""
        return pages[position // self.page_size] * self.page_size + position % self.page_size


def pages_from_memory(
    shape: CacheShape,
    page_size: int,
    device: torch.device,
    utilization: float,
) -> int:
    """Pages that fit in ``utilization`` of the card, after what this process already holds.

    Call it after the weights are loaded and after a full-size forward has run, so that the
    peak allocation counts the activations a step needs.
    """
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    in_use_by_others = total - free - torch.cuda.memory_reserved(device)
    budget = utilization * total - peak - in_use_by_others
    pages = int(budget // (page_size * shape.bytes_per_token))
    if pages < 2:
        raise RuntimeError(
            f"no room for a KV cache: {utilization:.0%} of {total / 2**30:.1f} GiB leaves "
            f"{budget / 2**30:.2f} GiB after the weights ({peak / 2**30:.1f} GiB peak); raise "
            "ARTICLEFORGE_TEXT_GPU_MEMORY_UTILIZATION or use a smaller model"
        )
    return pages
