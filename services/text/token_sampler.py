"""Batched sampling on the device: every row's own penalties, temperature, top-k, top-p, seed.

All rows of a step are sampled by a handful of tensor operations, with no copy to the host per
row. Seeds reproduce without a ``torch.Generator`` per row: the noise for a row is a counter-
based hash of (seed, how many tokens the row has generated, vocabulary index), so a request
draws the same numbers alone or in any batch, at any row. Sampling is the Gumbel-max trick,
``argmax(logits / T + Gumbel noise)``, which draws exactly from ``softmax(logits / T)`` over the
tokens that top-k and top-p keep.

Penalties need each request's history: the sampler keeps two tables on the device, one row per
running request (its ``row``), counting generated tokens (frequency, presence) and marking every
token seen in the prompt or output (repetition penalty, as transformers applies it).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from services.text.device import to_device
from services.text.schemas import SamplingParams
from services.text.sequence import SeqState

_MASK32 = 0xFFFFFFFF
# Temperatures below this sample as greedy would; dividing by them would overflow float32.
_MIN_TEMPERATURE = 1e-5


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Thomas Mueller's), on int64 tensors holding values < 2**32.

    The multiplier is below 2**27, so no product leaves int64's range on any device.
    """
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[rows, vocab]`` floats in (0, 1), a pure function of each row's (seed, step)."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    key = _mix(_mix(lo ^ _mix(hi)) ^ ((steps * 0x9E3779B1) & _MASK32))
    index = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _mix(_mix((key[:, None] + index[None, :] * 0x27D4EB2D) & _MASK32) ^ key[:, None])
    return ((bits >> 8).to(torch.float32) + 0.5) / float(1 << 24)


@dataclass
class SamplingBatch:
    """The per-row parameters of one step, as device tensors (built once per step)."""

    rows: torch.Tensor  # int64 [rows]: each request's row of the penalty tables
    seeds: torch.Tensor  # int64 [rows]
    steps: torch.Tensor  # int64 [rows]: tokens generated so far
    temperature: torch.Tensor  # float32 [rows, 1]; 1.0 for greedy rows
    greedy: torch.Tensor  # bool [rows]
    top_k: torch.Tensor  # int64 [rows]; vocab size when off
    top_p: torch.Tensor  # float32 [rows, 1]
    repetition: torch.Tensor | None  # float32 [rows, 1], or None when no row uses it
    frequency: torch.Tensor | None
    presence: torch.Tensor | None
    all_greedy: bool
    any_top_k: bool
    any_top_p: bool


class Sampler:
    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.vocab = vocab
        self.device = device
        self.counts = torch.zeros((rows, vocab), dtype=torch.int32, device=device)
        self.seen = torch.zeros((rows, vocab), dtype=torch.bool, device=device)
        self._free = list(range(rows - 1, -1, -1))

    # --- per-request tables ---------------------------------------------------------------

    def acquire(self, prompt_ids: Seq[int]) -> int:
        row = self._free.pop()
        self.counts[row].zero_()
        self.seen[row].zero_()
        ids = [i for i in prompt_ids if 0 <= i < self.vocab]
        if ids:
            index = to_device(torch.tensor(ids, dtype=torch.int64), self.device)
            self.seen[row].index_fill_(0, index, True)
        return row

    def release(self, row: int) -> None:
        if row >= 0:
            self._free.append(row)

    def record(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Adds each row's new token to its history (on the device, no sync)."""
        # Values as device tensors: a Python scalar here would be copied from pageable host
        # memory, which waits for the stream to drain (one sync per step, measured).
        self.counts.index_put_((rows, tokens), torch.ones_like(tokens, dtype=torch.int32), True)
        self.seen.index_put_((rows, tokens), torch.ones_like(tokens, dtype=torch.bool))

    # --- one step -------------------------------------------------------------------------

    def draw(self, logits: torch.Tensor, seqs: Seq[SeqState], last: torch.Tensor) -> torch.Tensor:
        """Each request's next token (logits row i is ``seqs[i]``), added to its history and
        written to ``last`` (per row: the next decode input), all on the device."""
        batch = self.batch(
            [s.params for s in seqs],
            [s.row for s in seqs],
            [s.seed for s in seqs],
            [s.sampled for s in seqs],
        )
        for seq in seqs:
            seq.sampled += 1
        tokens = self.sample(logits, batch)
        self.record(batch.rows, tokens)
        last[batch.rows] = tokens
        return tokens

    def batch(
        self, params: Seq[SamplingParams], rows: Seq[int], seeds: Seq[int], steps: Seq[int]
    ) -> SamplingBatch:
        greedy = [p.greedy for p in params]
        top_k = [p.top_k if 0 < p.top_k < self.vocab else self.vocab for p in params]
        rep = [p.repetition_penalty for p in params]
        freq = [p.frequency_penalty for p in params]
        pres = [p.presence_penalty for p in params]
        temps = [
            1.0 if g else max(p.temperature, _MIN_TEMPERATURE)
            for p, g in zip(params, greedy, strict=True)
        ]
        # Two host tensors, one copy each: a copy from pageable memory would wait for the
        # device to drain and undo the engine's overlap of host and device work.
        seed_bits = [s & (2**63 - 1) for s in seeds]
        int_rows = [list(rows), seed_bits, list(steps), top_k, [int(g) for g in greedy]]
        float_rows = [temps, [p.top_p for p in params], rep, freq, pres]
        ints = to_device(torch.tensor(int_rows, dtype=torch.int64), self.device)
        floats = to_device(torch.tensor(float_rows, dtype=torch.float32), self.device)
        sampled = [not g for g in greedy]
        return SamplingBatch(
            rows=ints[0],
            seeds=ints[1],
            steps=ints[2],
            temperature=floats[0][:, None],
            greedy=ints[4].bool(),
            top_k=ints[3],
            top_p=floats[1][:, None],
            repetition=floats[2][:, None] if any(r != 1.0 for r in rep) else None,
            frequency=floats[3][:, None] if any(freq) else None,
            presence=floats[4][:, None] if any(pres) else None,
            all_greedy=not any(sampled),
            any_top_k=any(k < self.vocab for k, s in zip(top_k, sampled, strict=True) if s),
            any_top_p=any(p.top_p < 1.0 for p, s in zip(params, sampled, strict=True) if s),
        )

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """``[rows, vocab]`` logits (any float dtype) -> ``[rows]`` int64 token ids."""
        logits = logits.float()
        if batch.repetition is not None:
            seen = self.seen[batch.rows]
            penalized = torch.where(
                logits > 0, logits / batch.repetition, logits * batch.repetition
            )
            logits = torch.where(seen, penalized, logits)
        if batch.frequency is not None or batch.presence is not None:
            counts = self.counts[batch.rows].float()
            if batch.frequency is not None:
                logits = logits - batch.frequency * counts
            if batch.presence is not None:
                logits = logits - batch.presence * (counts > 0).float()
        best = logits.argmax(dim=-1)
        if batch.all_greedy:
            return best
        scaled = logits / batch.temperature
        if batch.any_top_k or batch.any_top_p:
            scaled = self._filter(scaled, batch)
        noise = uniform_noise(batch.seeds, batch.steps, logits.shape[-1])
        drawn = (scaled - torch.log(-torch.log(noise))).argmax(dim=-1)
        return torch.where(batch.greedy, best, drawn)

    @staticmethod
    def _filter(scaled: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Top-k, then top-p over what top-k kept (as transformers orders them)."""
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        ranks = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
        drop = ranks >= batch.top_k[:, None]
        if batch.any_top_p:
            probs = ordered.masked_fill(drop, float("-inf")).softmax(dim=-1)
            # Drop a token when the mass before it already reaches top_p; the first one stays
            # whatever top_p is, so a vanishing top_p is greedy, never an empty distribution.
            drop |= (probs.cumsum(dim=-1) - probs) >= batch.top_p
        drop[:, 0] = False
        return scaled.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
