"""The batched sampler: seeds reproduce at any row, limits degrade to greedy, penalties as defined.

Most tests drive ``Sampler`` directly on the CPU with made-up logits. The distribution tests
give every row of one big batch its own seed, so the rows are independent draws, and compare
how often each token came out with the softmax of the penalized logits that the schema's field
descriptions define. The seeds are fixed, so the counts are the same on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from fastapi.testclient import TestClient

from services.text.schemas import SamplingParams
from services.text.token_sampler import Sampler

VOCAB = 1024
CPU = torch.device("cpu")
STEPS = 12  # decode steps per check


def params(**fields: object) -> SamplingParams:
    return SamplingParams(max_new_tokens=None, **fields)  # type: ignore[arg-type]


def random_logits(rows: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((rows, VOCAB), generator=generator) * scale


def draw(
    sampler: Sampler,
    logits: torch.Tensor,
    row_params: Sequence[SamplingParams],
    rows: Sequence[int],
    seeds: Sequence[int],
    steps: Sequence[int],
) -> list[int]:
    batch = sampler.batch(row_params, rows, seeds, steps)
    tokens = sampler.sample(logits, batch)
    return [int(t) for t in tokens]


def test_a_row_draws_the_same_token_alone_or_at_any_row_of_a_batch() -> None:
    sampler = Sampler(8, VOCAB, CPU)
    # The row under test has a history of its own, so its penalties read its own row.
    mine = params(
        temperature=0.9, top_p=0.9, top_k=200, repetition_penalty=1.2, presence_penalty=0.3
    )
    my_row = sampler.acquire([5, 6, 7])
    sampler.record(torch.tensor([my_row]), torch.tensor([11]))
    others = [
        params(temperature=0.0),
        params(temperature=1.5, top_p=0.5),
        params(temperature=1.0, frequency_penalty=0.7, presence_penalty=-0.4),
        params(temperature=0.7, top_k=5, repetition_penalty=0.6),
    ]
    other_rows = [sampler.acquire([1, 2, 3, i]) for i in range(len(others))]
    for row in other_rows:
        sampler.record(torch.tensor([row, row]), torch.tensor([11, 40 + row]))
    own_logits = random_logits(1, seed=0, scale=1.0)  # flat: many tokens stay in play
    other_logits = random_logits(len(others), seed=1)

    alone = []
    for step in range(STEPS):
        alone += draw(sampler, own_logits, [mine], [my_row], [1234], [step])
    assert len(set(alone)) > STEPS // 2, "the draw does not change with the step"

    for at in (0, 2, len(others)):
        row_params = [*others[:at], mine, *others[at:]]
        rows = [*other_rows[:at], my_row, *other_rows[at:]]
        logits = torch.cat([other_logits[:at], own_logits, other_logits[at:]])
        seeds = [7, 8, 9, 10][:at] + [1234] + [7, 8, 9, 10][at:]
        for step in range(STEPS):
            steps = [step + 3] * at + [step] + [step + 5] * (len(others) - at)
            tokens = draw(sampler, logits, row_params, rows, seeds, steps)
            assert tokens[at] == alone[step], f"row {at}, step {step}"

    other_seed = [draw(sampler, own_logits, [mine], [my_row], [1235], [s])[0] for s in range(STEPS)]
    assert other_seed != alone


def test_top_k_1_is_greedy() -> None:
    sampler = Sampler(1, VOCAB, CPU)
    row = sampler.acquire([1])
    logits = random_logits(16, seed=2)
    row_params = [params(temperature=2.0, top_k=1, top_p=0.99 if i % 2 else 1.0) for i in range(16)]
    for step in range(5):
        tokens = draw(sampler, logits, row_params, [row] * 16, list(range(16)), [step] * 16)
        assert tokens == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1.0, "top_p": 5e-324},
        {"temperature": 1e-30},
        {"temperature": 1e-30, "top_p": 5e-324},
        {"temperature": 1e-30, "top_k": 40, "repetition_penalty": 2.0},
        {"temperature": 2.0, "top_p": 5e-324, "frequency_penalty": 2.0, "presence_penalty": 2.0},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vanishing_top_p_and_tiny_temperature_give_the_greedy_token(
    fields: dict[str, float], dtype: torch.dtype
) -> None:
    sampler = Sampler(1, VOCAB, CPU)
    row = sampler.acquire([])  # no history: the penalties leave the logits alone
    # Large logits too, as a bf16 model can produce; dividing by a tiny temperature must not
    # overflow into inf - inf = NaN.
    logits = torch.cat([random_logits(8, seed=3), random_logits(8, seed=4, scale=300.0)])
    logits = logits.to(dtype)
    row_params = [params(**fields)] * len(logits)
    for step in range(3):
        tokens = draw(
            sampler, logits, row_params, [row] * len(logits), list(range(16)), [step] * 16
        )
        assert tokens == logits.float().argmax(dim=-1).tolist()


# --- penalties and filters, as distributions -------------------------------------------------

ROWS = 4000  # independent draws: std of a token's share is at most 0.008
BASE = [1.0, 0.5, -0.5, 0.0]
PROMPT = [2]  # token 2 appears only in the prompt
GENERATED = [0, 0, 1]  # token 0 was generated twice, token 1 once


def shares(fields: dict[str, float]) -> list[float]:
    """How often each of 4 tokens is drawn, over ROWS seeds, after the history above."""
    sampler = Sampler(1, len(BASE), CPU)
    row = sampler.acquire(PROMPT)
    for token in GENERATED:
        sampler.record(torch.tensor([row]), torch.tensor([token]))
    logits = torch.tensor([BASE]).expand(ROWS, -1)
    row_params = [params(**fields)] * ROWS
    tokens = torch.tensor(draw(sampler, logits, row_params, [row] * ROWS, range(ROWS), [3] * ROWS))
    return (torch.bincount(tokens, minlength=len(BASE)).float() / ROWS).tolist()


def softmax(values: list[float]) -> list[float]:
    return torch.tensor(values).softmax(dim=-1).tolist()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 1.0}, softmax(BASE)),
        ({"temperature": 0.5}, softmax([2 * x for x in BASE])),
        # Seen tokens (prompt or output): positive logits divided, negative ones multiplied.
        ({"temperature": 1.0, "repetition_penalty": 2.0}, softmax([0.5, 0.25, -1.0, 0.0])),
        # Per occurrence in the output: token 0 loses 2 * 0.5, token 1 loses 0.5.
        ({"temperature": 1.0, "frequency_penalty": 0.5}, softmax([0.0, 0.0, -0.5, 0.0])),
        # Once per generated token, whatever the count; the prompt does not count.
        ({"temperature": 1.0, "presence_penalty": 0.5}, softmax([0.5, 0.0, -0.5, 0.0])),
        ({"temperature": 1.0, "presence_penalty": -1.0}, softmax([2.0, 1.5, -0.5, 0.0])),
        # Top-k and top-p renormalize over what they keep.
        ({"temperature": 1.0, "top_k": 2}, softmax([1.0, 0.5]) + [0.0, 0.0]),
        ({"temperature": 1.0, "top_p": 0.5}, softmax([1.0, 0.5]) + [0.0, 0.0]),
    ],
    ids=[
        "plain",
        "temperature",
        "repetition",
        "frequency",
        "presence",
        "negative-presence",
        "top-k",
        "top-p",
    ],
)
def test_sampled_shares_follow_the_defined_distribution(
    fields: dict[str, float], expected: list[float]
) -> None:
    assert shares(fields) == pytest.approx(expected, abs=0.03)


def test_a_huge_presence_penalty_forbids_every_generated_token() -> None:
    got = shares({"temperature": 1.0, "presence_penalty": 1e9})
    assert got[0] == got[1] == 0.0
    assert got[2] > 0.1  # a prompt-only token stays allowed
    assert sum(got) == pytest.approx(1.0)


# --- the same limits through HTTP --------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1.0, "top_p": 5e-324, "seed": 1},
        {"temperature": 1e-30, "seed": 2},
        {"temperature": 1e-30, "top_p": 5e-324},
        {"temperature": 2.0, "top_k": 1, "seed": 3},
    ],
)
def test_extreme_sampling_limits_over_http_answer_the_greedy_text(
    client: TestClient, fields: dict[str, float]
) -> None:
    body = {"prompt": "Write about solar power.", "max_new_tokens": 16}
    greedy = client.post("/v1/generate", json={**body, "temperature": 0})
    reply = client.post("/v1/generate", json={**body, **fields})
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == greedy.json()["text"]
    assert reply.json()["usage"]["completion_tokens"] == greedy.json()["usage"]["completion_tokens"]
