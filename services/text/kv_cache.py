"""The KV cache: fixed pages allocated once at start-up, handed to requests and taken back.

The cache is one tensor per layer, ``[pages, page_size, kv_heads, head_dim]`` for keys and one
for values, allocated before the first request so that serving never allocates KV memory. A
request gets all the pages its prompt plus ``max_new_tokens`` can need when it is admitted
(so it can never run out half-way and no preemption is needed), and gives them back the
moment it finishes or is cancelled. Page 0 is never handed out: padded rows of a CUDA graph
write there.

The prefix cache (``ARTICLEFORGE_TEXT_PREFIX_CACHE``, on by default; native runner only), in
the block-hash scheme of vLLM v1 and nano-vllm: every page that is completely filled with
prompt tokens gets a key, a 128-bit hash of its token ids and of the key of the page before
it (the first page's parent is the adapter index), so one key names the whole prefix up to
the page's end. A request whose prompt begins with the same pages takes them (the reference
count rises) instead of computing them again; the hit never covers the prompt's last token,
which must run for its logits. When the last holder of a hashed page lets go, the page is not
returned to the plain free list but kept, still hittable, in a least-recently-used list of
evictable pages; allocation takes plain free pages first and then evicts the oldest of those
(dropping its key). Generated tokens are never cached: a page that decode writes into is
never hashed. ``usage`` counts pages that some request holds. The metrics
``articleforge_text_prefix_cache_hit_tokens_total`` and ``..._hits_total`` (beside
``articleforge_text_prompt_tokens_total``) tell how much prefill the cache saves.

How many pages: an explicit token count, or (on CUDA) a share of the card's memory, measured
after the weights are loaded and a full-size prefill has run, as vLLM's
``gpu_memory_utilization`` does.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
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


def root_link(adapter: int) -> bytes:
    """What the first page of a prompt is chained to: rows of different unmerged adapters
    have different K/V for the same tokens."""
    return b"adapter:%d" % adapter


def page_key(link: bytes, tokens: Sequence[int]) -> bytes:
    """The key of one full page: its parent's key (or ``root_link``) and its token ids.

    A 128-bit BLAKE2b digest, so that two different prefixes share a key with odds of about
    2**-64 even over billions of pages; a hit also compares the page's own tokens and parent
    key (``_Hashed``), so a wrong hit would take a collision of the parent's digest too.
    """
    digest = hashlib.blake2b(link, digest_size=16)
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


@dataclass(frozen=True)
class _Hashed:
    """What a hashed page holds, compared on every hit."""

    key: bytes
    link: bytes  # the parent page's key, or root_link(adapter) for a prompt's first page
    tokens: tuple[int, ...]


class KVCacheManager:
    def __init__(
        self,
        shape: CacheShape,
        num_pages: int,
        page_size: int,
        device: torch.device,
        prefix_cache: bool = False,
    ) -> None:
        if num_pages < 2:
            raise ValueError("the KV cache needs at least 2 pages (one is reserved)")
        self.shape = shape
        self.page_size = page_size
        self.num_pages = num_pages
        self.device = device
        self.prefix_cache = prefix_cache
        size = (num_pages, page_size, shape.kv_heads, shape.head_dim)
        self.keys = [
            torch.zeros(size, dtype=shape.dtype, device=device) for _ in range(shape.layers)
        ]
        self.values = [
            torch.zeros(size, dtype=shape.dtype, device=device) for _ in range(shape.layers)
        ]
        self._free = list(range(num_pages - 1, 0, -1))  # page 0 is the scratch page
        self._refs = [0] * num_pages
        self._hashed: dict[int, _Hashed] = {}  # page -> its key and contents
        self._table: dict[bytes, int] = {}  # key -> page
        # Hashed pages nobody holds, oldest first: still hittable until their memory is needed.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        logger.info(
            "kv cache: %d pages of %d tokens (%d tokens, %.2f GiB, %s) on %s, prefix cache %s",
            num_pages - 1,
            page_size,
            self.capacity_tokens,
            num_pages * page_size * shape.bytes_per_token / 2**30,
            str(shape.dtype).removeprefix("torch."),
            device,
            "on" if prefix_cache else "off",
        )

    @property
    def capacity_tokens(self) -> int:
        return (self.num_pages - 1) * self.page_size

    @property
    def used_pages(self) -> int:
        """Pages some request holds (reference count above zero)."""
        return self.num_pages - 1 - len(self._free) - len(self._evictable)

    @property
    def usage(self) -> float:
        return self.used_pages / max(1, self.num_pages - 1)

    @property
    def evictable_pages(self) -> int:
        """Hashed pages nobody holds, kept for later hits until their memory is needed."""
        return len(self._evictable)

    def refcount(self, page: int) -> int:
        return self._refs[page]

    def is_hashed(self, page: int) -> bool:
        return page in self._hashed

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    # --- the hash chain ---------------------------------------------------------------------

    def page_keys(self, ids: Sequence[int], adapter: int) -> list[bytes]:
        """The chained key of every full page of ``ids`` (none with the prefix cache off)."""
        if not self.prefix_cache:
            return []
        keys: list[bytes] = []
        link = root_link(adapter)
        size = self.page_size
        for start in range(0, len(ids) - size + 1, size):
            link = page_key(link, ids[start : start + size])
            keys.append(link)
        return keys

    def match(self, ids: Sequence[int], keys: Sequence[bytes], adapter: int) -> list[int]:
        """The cached pages that begin this prompt, in order: full pages within its first
        ``len(ids) - 1`` tokens (the last prompt token always runs, for its logits)."""
        hits: list[int] = []
        link = root_link(adapter)
        size = self.page_size
        for j in range(min(len(keys), (len(ids) - 1) // size)):
            page = self._table.get(keys[j])
            if page is None:
                break
            held = self._hashed[page]
            if held.link != link or held.tokens != tuple(ids[j * size : (j + 1) * size]):
                break  # a digest collision: compute it instead
            hits.append(page)
            link = keys[j]
        return hits

    def register(
        self,
        pages: Sequence[int],
        ids: Sequence[int],
        keys: Sequence[bytes],
        adapter: int,
        first: int,
        stop: int,
    ) -> list[int]:
        """Hashes pages ``first .. stop-1`` of a sequence, once the step that fills them with
        prompt tokens is planned; returns the pages that became hittable. A page whose key is
        already in the table (another request computed the same prefix alongside) stays
        private."""
        added: list[int] = []
        size = self.page_size
        for j in range(first, stop):
            key, page = keys[j], pages[j]
            if key in self._table or page in self._hashed:
                continue
            link = keys[j - 1] if j else root_link(adapter)
            self._hashed[page] = _Hashed(key, link, tuple(ids[j * size : (j + 1) * size]))
            self._table[key] = page
            added.append(page)
        return added

    def forget(self, pages: Sequence[int]) -> None:
        """Drops the keys of pages whose contents cannot be trusted (their step failed)."""
        for page in pages:
            held = self._hashed.pop(page, None)
            if held is not None and self._table.get(held.key) == page:
                del self._table[held.key]
            if page in self._evictable:
                del self._evictable[page]
                self._free.append(page)

    # --- handing pages out and taking them back ---------------------------------------------

    def can_allocate(self, tokens: int, hits: Sequence[int] = ()) -> bool:
        """Whether a request of ``tokens`` fits, sharing ``hits`` (from ``match``). Hit pages
        that nobody holds leave the evictable list, so they are not counted twice."""
        revived = sum(1 for page in hits if self._refs[page] == 0)
        needed = self.pages_for(tokens) - len(hits)
        return needed <= len(self._free) + len(self._evictable) - revived

    def allocate(self, tokens: int, hits: Sequence[int] = ()) -> list[int]:
        """The pages for ``tokens``: the shared ``hits`` first, then fresh ones."""
        needed = self.pages_for(tokens) - len(hits)
        if not self.can_allocate(tokens, hits):
            raise RuntimeError(
                f"kv cache: {needed} pages asked, {len(self._free)} free and "
                f"{len(self._evictable)} evictable"
            )
        for page in hits:
            if self._refs[page] == 0:
                del self._evictable[page]
            self._refs[page] += 1
        fresh = self._free[-needed:][::-1] if needed > 0 else []
        del self._free[len(self._free) - len(fresh) :]
        while len(fresh) < needed:
            page, _ = self._evictable.popitem(last=False)  # the least recently used
            held = self._hashed.pop(page)
            del self._table[held.key]
            fresh.append(page)
        for page in fresh:
            self._refs[page] = 1
        return [*hits, *fresh]

    def free(self, pages: list[int]) -> None:
        """Lets go of a request's pages. Hashed ones that nobody holds any more become
        evictable, the prefix's tail first, so that a prefix is evicted from its end."""
        for page in reversed(pages):
            self._refs[page] -= 1
            if self._refs[page] > 0:
                continue
            if page in self._hashed:
                self._evictable[page] = None
            else:
                self._free.append(page)
        pages.clear()

    def slot(self, pages: list[int], position: int) -> int:
        """The flat cache index where the token at ``position`` of a sequence lives."""
        return pages[position // self.page_size] * self.page_size + position % self.page_size


def size_pages(
    shape: CacheShape,
    page_size: int,
    rows: int,
    context: int,
    device: torch.device,
    cache_tokens: int | None,
    utilization: float,
    profile: Callable[[], None] | None,
) -> int:
    """How many pages (the scratch page included) the cache gets.

    ``cache_tokens`` (``ARTICLEFORGE_TEXT_KV_CACHE_TOKENS``) when set; else, on CUDA with a
    ``profile`` (a full-size forward, run here before measuring), ``utilization`` of the card;
    else 1 GiB's worth. Never more than every row at full context: the rest would be waste.
    """
    most = rows * -(-context // page_size) + 1
    if cache_tokens is not None:
        return min(most, -(-cache_tokens // page_size) + 1)
    if device.type == "cuda" and profile is not None:
        profile()
        return min(most, pages_from_memory(shape, page_size, device, utilization))
    per_token = max(1, shape.bytes_per_token)
    return min(most, max(2, (2**30 // per_token) // page_size + 1))


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
