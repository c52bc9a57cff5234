"""Perplexity scoring, shared by the text service and ``training/evaluate.py``.

One definition for both, so the service's ``/v1/perplexity`` and offline evaluation agree:
the context (if any) is tokenized with the tokenizer's special tokens (BOS), the scored text
without them, and only the text's tokens count. Without a context, every token after the first
is scored.
"""

from __future__ import annotations

from typing import Any

import torch


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
