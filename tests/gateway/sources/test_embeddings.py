"""Hybrid retrieval on the tiny sentence-embedding model (2-layer BERT, random weights).

Random weights make similarities meaningless, so nothing here expects a semantic ranking; it
checks the mechanics a user relies on: the passages come from the article's own set, the same
model ranks the same way every time, a passage both rankings put first comes first, a query
that repeats a passage word for word finds it (cosine 1 whatever the weights), unset the
setting changes nothing, and the section prompts carry the passages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.gateway import grounding
from services.gateway.config import GatewaySettings
from services.gateway.pipeline import Outline, write_sections
from services.gateway.schemas import ArticleRequest
from services.gateway.sources import Passage, PassageIndex, Source, split_passages
from services.gateway.sources.embeddings import (
    HybridIndex,
    build_tiny_embedding,
    load_embedder,
    reciprocal_rank_fusion,
)
from tests.gateway.test_pipeline import RecordingText

TEXTS = {
    "src_1": (
        "Home batteries store the surplus of a sunny afternoon for the evening. A typical "
        "lithium iron phosphate battery holds 10 kWh and lasts about 6,000 cycles.\n\n"
        "Inverters turn the battery's direct current into the alternating current of the house."
    ),
    "src_2": (
        "Rooftop panels cost about 2.50 dollars per watt installed in 2025, so a 6 kW system "
        "costs near 15,000 dollars before the federal tax credit of 30 percent.\n\n"
        "Most towns ask for an electrical permit and a structural check of the roof."
    ),
    "src_3": (
        "Tidal barrages across an estuary turn the flood and the ebb into electricity.\n\n"
        "Critics point to the silting of the estuary behind the barrage."
    ),
}


def _sources() -> list[Source]:
    return [
        Source(id=sid, type="text", title=f"Title {sid}", text=text, chars=len(text))
        for sid, text in TEXTS.items()
    ]


def _passages() -> list[Passage]:
    # Small passages, so that each paragraph is one of them.
    return [p for s in _sources() for p in split_passages(s, target_chars=200)]


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> Any:
    return load_embedder("tiny", cache_dir)


def test_fusion_puts_first_what_both_rankings_put_first() -> None:
    assert reciprocal_rank_fusion([[2, 0, 1], [2, 1, 0]])[0] == 2
    # Second in both beats first in one and absent from the other: 2/62 > 1/61.
    assert reciprocal_rank_fusion([[0, 1], [1, 2]]) == [1, 0, 2]
    # A tie (each first once) goes to the smaller item, on every run.
    assert reciprocal_rank_fusion([[3, 5], [5, 3]]) == [3, 5]
    assert reciprocal_rank_fusion([[], []]) == []


def test_the_tiny_model_loads_once_per_process_and_is_a_sentence_transformers_folder(
    cache_dir: Path, embedder: Any
) -> None:
    assert load_embedder("tiny", cache_dir) is embedder
    folder = build_tiny_embedding(cache_dir)
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling/config.json").is_file()
    vectors = embedder.encode(["a", "b"], normalize_embeddings=True)
    assert vectors.shape == (2, 32)


def test_a_second_build_has_the_same_weights(embedder: Any, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    again = SentenceTransformer(str(build_tiny_embedding(tmp_path)), device="cpu")
    texts = [p.text for p in _passages()]
    assert np.array_equal(embedder.encode(texts), again.encode(texts))


def test_hybrid_search_returns_passages_of_the_set_the_same_way_every_time(
    embedder: Any,
) -> None:
    passages = _passages()
    assert len(passages) >= 5
    first, second = HybridIndex(passages, embedder), HybridIndex(passages, embedder)
    for query in ("battery cycles", "tax credit for panels", "estuary", "nothing shared here"):
        found = first.search(query, 4)
        assert found == second.search(query, 4)
        assert len(found) == 4 and len(set(found)) == 4 and all(p in passages for p in found)
    # The embedding ranks every passage, so a query with no word in common still gets some.
    assert len(first.search("zzz qqq", 3)) == 3
    assert first.search("battery", 0) == [] and HybridIndex([], embedder).search("x", 4) == []


def test_a_query_that_repeats_a_passage_finds_that_passage_first(embedder: Any) -> None:
    passages = _passages()
    index = HybridIndex(passages, embedder)
    for position, passage in enumerate(passages):
        assert index.dense_ranking(passage.text)[0] == position  # cosine 1.0
        assert index.search(passage.text, 1) == [passage]  # and BM25 agrees: first by both


def test_unset_the_setting_leaves_bm25_alone(cache_dir: Path) -> None:
    assert GatewaySettings(_env_file=None).sources_embedding_model is None
    assert (
        GatewaySettings(_env_file=None, sources_embedding_model="tiny").sources_embedding_model
        == "tiny"
    )
    plain = grounding.Grounding(_sources())
    assert type(plain.index) is PassageIndex
    bm25 = PassageIndex([p for s in _sources() for p in split_passages(s)])
    for heading in ("Batteries", "The tax credit", "Estuary silting"):
        assert plain.passages_for("Home energy", heading) == bm25.search(
            f"{heading} {heading} Home energy", grounding.PASSAGES_PER_SECTION
        )


@pytest.fixture(scope="module")
def tiny_engine(cache_dir: Path) -> Iterator[Any]:
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model

    settings = TextSettings(_env_file=None, text_model="tiny", text_device="cpu")
    engine = TextEngine(settings, load_text_model(settings))
    engine.start()
    yield engine
    engine.shutdown()


def test_section_prompts_carry_the_hybrid_passages(tiny_engine: Any, cache_dir: Path) -> None:
    request = ArticleRequest(
        topic="Energy at home",
        sections=2,
        target_words=100,
        sources=[{"type": "text", "title": f"Title {s}", "text": t} for s, t in TEXTS.items()],
    )
    grounded = grounding.Grounding(_sources(), embedding_model="tiny", cache_dir=cache_dir)
    assert isinstance(grounded.index, HybridIndex)
    outline = Outline(title="Energy at home", headings=["Batteries", "Zzz unrelated words"])
    text = RecordingText(tiny_engine)
    bodies, _ = asyncio.run(write_sections(text, request, outline, 7, grounded=grounded))
    assert len(bodies) == 2
    for body, heading in zip(text.bodies, outline.headings, strict=True):
        given = grounded.passages_for(outline.title, heading)
        assert given and "Sources for this section: [1] (" in body["prompt"]
        assert all(p.text in body["prompt"] for p in given)
