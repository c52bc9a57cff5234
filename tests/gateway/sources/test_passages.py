"""Passages: offsets that point back into the source, chunks that respect paragraphs and words,
and BM25 retrieval that puts the passage about the query first."""

from __future__ import annotations

import random

from services.gateway.sources import (
    Passage,
    PassageIndex,
    Source,
    SourceError,
    split_passages,
    summary,
    tokenize,
)


def text_source(text: str, source_id: str = "src_1") -> Source:
    return Source(id=source_id, type="text", title="t", text=text, chars=len(text))


def messy_text(seed: int) -> str:
    """Paragraphs of varied length, long sentences, a URL, Japanese without spaces."""
    rng = random.Random(seed)
    words = "tide estuary barrage turbine megawatt silt ebb flood Rance 1966 café".split()
    paragraphs = []
    for _ in range(30):
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + rng.choice(".!?")
            for _ in range(rng.randint(1, 12))
        ]
        paragraphs.append(" ".join(sentences))
    paragraphs.insert(5, "https://example.com/" + "a" * 1500)
    paragraphs.insert(9, "潮汐発電は月の引力を利用する。" * 80)
    paragraphs.insert(12, "# A heading")
    return "\n\n".join(paragraphs) + "\n\nLast line."


def run_length(text: str, position: int) -> int:
    """Length of the run of non-space characters around ``position``."""
    start = end = position
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return end - start


def test_passages_point_back_into_the_source_and_never_split_a_word() -> None:
    for seed in range(5):
        source = text_source(messy_text(seed))
        text = source.text
        passages = split_passages(source, target_chars=300)
        assert [p.index for p in passages] == list(range(len(passages)))
        covered = []
        for passage in passages:
            assert text[passage.start : passage.end] == passage.text
            assert passage.text == passage.text.strip()
            assert passage.source_id == "src_1"
            covered.append(passage.text)
            # A cut falls on a space, or inside a run longer than a passage (the URL, the
            # Japanese paragraph), where there is no space to fall on.
            for cut in (passage.start, passage.end):
                assert (
                    cut in (0, len(text))
                    or text[cut - 1 : cut + 1] != text[cut - 1 : cut + 1].strip()
                    or run_length(text, cut) > 300
                )
            assert len(passage.text) <= 450
        # Nothing is lost: every non-space character is in exactly one passage, in order.
        assert "".join("".join(covered).split()) == "".join(text.split())
        ends = [p.end for p in passages]
        assert ends == sorted(ends)


def test_paragraphs_that_fit_stay_whole_and_short_ones_share() -> None:
    first = "Tides rise twice a day. " * 16  # ~380 characters each
    second = "The Rance barrage opened in 1966. " * 11
    text = f"# Heading\n\n{first.strip()}\n\n{second.strip()}\n\nShort tail."
    passages = split_passages(text_source(text), target_chars=700)
    assert [p.text for p in passages] == [
        f"# Heading\n\n{first.strip()}",
        f"{second.strip()}\n\nShort tail.",
    ]


def test_a_long_paragraph_is_cut_at_sentence_ends() -> None:
    text = " ".join(f"Sentence number {k} says something about tides." for k in range(60))
    passages = split_passages(text_source(text), target_chars=200)
    assert len(passages) > 5
    assert all(p.text.endswith("tides.") for p in passages)
    assert all(len(p.text) <= 200 for p in passages)


def test_an_unusable_source_has_no_passages() -> None:
    failed = Source(
        id="src_1", type="url", title="x", error=SourceError(type="timeout", message="late")
    )
    assert split_passages(failed) == []
    assert summary(failed) == ""


def test_summary_takes_the_first_sentences_that_fit() -> None:
    source = text_source(
        "# The Rance\n\nThe station opened in 1966. It makes 240 MW at peak. Critics point "
        "to the silt."
    )
    assert summary(source, chars=60) == "The station opened in 1966. It makes 240 MW at peak."
    assert summary(source, chars=40) == "The station opened in 1966."
    assert summary(source) == (
        "The station opened in 1966. It makes 240 MW at peak. Critics point to the silt."
    )
    one_long = text_source("word " * 200)
    assert summary(one_long, chars=50) == ("word " * 10).strip() + "…"  # 50 characters


def test_tokens_are_folded_words_less_stopwords_and_cjk_pairs() -> None:
    assert tokenize("The Rance opened in 1966, the FIRST of its kind; Café!") == [
        "rance",
        "opened",
        "1966",
        "first",
        "kind",
        "café",
    ]
    assert tokenize("潮汐発電") == ["潮汐", "汐発", "発電"]


PASSAGES = [
    Passage("src_1", 0, "Solar panels convert sunlight into electricity on rooftops.", 0, 59),
    Passage("src_1", 1, "The Rance tidal barrage spans the estuary and opened in 1966.", 60, 122),
    Passage("src_2", 0, "Wind turbines in the North Sea stand on floating foundations.", 0, 61),
    Passage("src_2", 1, "Tidal ranges of thirteen metres make the Rance site unusual.", 62, 122),
]


def test_the_passage_about_the_query_ranks_first() -> None:
    index = PassageIndex(PASSAGES)
    assert index.search("When did the tidal barrage on the Rance open?", k=2) == [
        PASSAGES[1],
        PASSAGES[3],
    ]
    assert index.search("floating wind foundations")[0] == PASSAGES[2]
    assert index.search("solar")[:1] == [PASSAGES[0]]
    assert len(index.search("tidal Rance solar wind", k=3)) == 3


def test_nothing_in_common_finds_nothing() -> None:
    index = PassageIndex(PASSAGES)
    assert index.search("chocolate cake recipe") == []
    assert index.search("the of and") == []  # stopwords only
    assert PassageIndex([]).search("tidal") == []


def test_a_term_in_half_the_passages_still_counts() -> None:
    # Okapi BM25's IDF is log((N - n + 0.5) / (n + 0.5)) = 0 here; Lucene's stays positive.
    pair = PASSAGES[:2]
    assert PassageIndex(pair).search("barrage") == [PASSAGES[1]]
