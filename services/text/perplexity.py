"""Perplexity scoring, shared by the text service and ``training/evaluate.py``.

One definition for both, so the service's ``/v1/perplexity`` and offline evaluation agree:
the context (if any) is tokenized with the tokenizer's special tokens (BOS), the scored text
without them, and only the text's tokens count. Without a context, every token after the first
is scored.

The service's side: ``prepare_job`` checks the texts on the caller's thread (4xx before
anything is queued) and ``run_job`` scores them on the engine thread, through the runner's
``score`` (the lean model or the HF one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from services.common.errors import InvalidRequest

logger = logging.getLogger(__name__)


def encode_scored(tokenizer: Any, text: str, context: str | None) -> tuple[list[int], int]:
    """Token ids of context+text, and how many leading ids are context (not scored)."""
    if context is not None:
        # A rendered chat prompt already starts with <s>; don't add a second one.
        special = not (tokenizer.bos_token and context.startswith(tokenizer.bos_token))
        lead = list(tokenizer(context, add_special_tokens=special).input_ids)
        return lead + list(tokenizer(text, add_special_tokens=False).input_ids), len(lead)
    ids = list(tokenizer(text).input_ids)
    return ids, 1


def nll_of(logits: torch.Tensor, ids: torch.Tensor, lead: int) -> float:
    """Mean negative log-likelihood (nats) of ``ids[lead:]``, from the ``[len(ids), vocab]``
    logits of a forward over all of ``ids`` (row t predicts token t + 1)."""
    nll = torch.nn.functional.cross_entropy(logits[lead - 1 : -1].float(), ids[lead:])
    return float(nll)


@torch.inference_mode()
def mean_nll(model: Any, ids: list[int], lead: int, device: torch.device, **extra: Any) -> float:
    """Mean negative log-likelihood (nats) of ``ids[lead:]`` given everything before it."""
    tensor = torch.tensor([ids], device=device)
    return nll_of(model(input_ids=tensor, **extra).logits[0], tensor[0], lead)


class Scorer(Protocol):
    def score(self, ids: list[int], lead: int, adapter_index: int) -> float: ...


@dataclass
class PerplexityJob:
    adapter: str
    sequences: list[tuple[list[int], int]]  # token ids, and how many lead tokens are context
    future: Future[list[tuple[float, int]]] = field(default_factory=Future)


def prepare_job(
    tokenizer: Any,
    context_window: int,
    adapter: str,
    texts: Sequence[str],
    contexts: Sequence[str] | None,
) -> PerplexityJob:
    """Tokenizes and checks the texts to score; raises the 4xx errors before anything is queued."""
    sequences = []
    for i, text in enumerate(texts):
        ids, lead = encode_scored(tokenizer, text, contexts[i] if contexts else None)
        if len(ids) <= lead:
            raise InvalidRequest(f"texts[{i}] has no tokens to score", param=f"texts.{i}")
        if len(ids) > context_window:
            raise InvalidRequest(
                f"texts[{i}] is {len(ids)} tokens long with its context; the model's "
                f"context window is {context_window} tokens",
                param=f"texts.{i}",
            )
        sequences.append((ids, lead))
    return PerplexityJob(adapter, sequences)


def run_job(job: PerplexityJob, scorer: Scorer, adapters: list[str]) -> None:
    """Scores every text (mean NLL, scored token count) into the job's future."""
    if job.future.cancelled():
        return
    try:
        index = adapters.index(job.adapter)
        results = [(scorer.score(ids, lead, index), len(ids) - lead) for ids, lead in job.sequences]
        job.future.set_result(results)
    except Exception as exc:
        logger.exception("perplexity job failed")
        job.future.set_exception(exc)
