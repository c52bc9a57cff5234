"""Hybrid retrieval: BM25 and a sentence-embedding model, fused by reciprocal rank.

With ``ARTICLEFORGE_SOURCES_EMBEDDING_MODEL`` set, a section's passages are ranked twice: by
BM25 (``PassageIndex``, which only ranks passages that share a term with the query) and by the
cosine similarity of their sentence-transformers embeddings to the query's (which ranks all of
them, so a passage that says the heading in other words still counts). The two rankings are
fused by reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): each passage scores
``sum(1 / (RRF_K + rank))`` over the rankings it appears in, rank counted from 1. RRF needs no
score scaling (BM25 scores and cosines live on different scales) and no weights to tune, and
``RRF_K = 60`` is the constant of the paper and of Elasticsearch's and OpenSearch's hybrid search.

``tiny`` is a 2-layer random-weight BERT with a WordPiece vocabulary trained here on the
project's corpus, saved as a sentence-transformers folder (Transformer + mean Pooling) beside
the other tiny models. Its similarities mean nothing; it exercises the same loading and
encoding code as a real model such as ``sentence-transformers/all-MiniLM-L6-v2``.
"""

from __future__ import annotations

import logging
import string
import tempfile
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.tiny import TINY, _build_atomically, corpus_text, tiny_root
from services.gateway.sources.passages import Passage, PassageIndex

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

RRF_K = 60
EMBEDDING_SEED = 4321
EMBEDDING_VOCAB_SIZE = 1024
# Tokens an embedding sees of a passage: a 700-character passage is about 150-250 of them.
EMBEDDING_MAX_TOKENS = 512


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    """The items of ``rankings`` (each best first) by their fused score, best first; ties go
    to the smaller item, so the order is the same on every run."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda item: (-scores[item], item))


class HybridIndex:
    """BM25 and embedding similarity over the passages of an article's usable sources."""

    def __init__(self, passages: Sequence[Passage], embedder: SentenceTransformer) -> None:
        self.passages = list(passages)
        self.embedder = embedder
        self._bm25 = PassageIndex(self.passages)
        self._position = {p: i for i, p in enumerate(self.passages)}
        self._vectors: np.ndarray | None = None
        if self.passages:
            self._vectors = self._encode([p.text for p in self.passages])

    def _encode(self, texts: list[str]) -> np.ndarray:
        # Unit vectors, so a dot product is the cosine.
        vectors: np.ndarray = self.embedder.encode(
            texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors

    def dense_ranking(self, query: str) -> list[int]:
        """Every passage's position, by cosine similarity to ``query``, best first."""
        if self._vectors is None or not query.strip():
            return []
        cosines = self._vectors @ self._encode([query])[0]
        return sorted(range(len(self.passages)), key=lambda i: (-float(cosines[i]), i))

    def search(self, query: str, k: int = 4) -> list[Passage]:
        """The ``k`` best passages for ``query`` by the fused ranking, best first."""
        if not self.passages or k <= 0:
            return []
        lexical = [self._position[p] for p in self._bm25.search(query, len(self.passages))]
        fused = reciprocal_rank_fusion([lexical, self.dense_ranking(query)])
        return [self.passages[i] for i in fused[:k]]


@lru_cache(maxsize=2)
def load_embedder(name: str, cache_dir: Path) -> SentenceTransformer:
    """The embedding model ``name`` (`tiny`, a sentence-transformers id or a local folder),
    loaded once per process."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RuntimeError(
            f"ARTICLEFORGE_SOURCES_EMBEDDING_MODEL={name} needs sentence-transformers: "
            "pip install 'articleforge[embeddings]', or unset it for BM25 alone"
        ) from None
    path = str(build_tiny_embedding(cache_dir)) if name == TINY else name
    model = SentenceTransformer(path, device="cpu" if name == TINY else None)
    logger.info("embedding model %s loaded", name)
    return model


def build_tiny_embedding(cache_dir: Path) -> Path:
    """The tiny sentence-embedding folder, built on first use (``TINY_VERSION`` covers it)."""
    return _build_atomically(tiny_root(cache_dir) / "embedding", _write_tiny_embedding)


def _tiny_vocabulary() -> dict[str, int]:
    """A WordPiece vocabulary from the corpus: the special tokens, every character of it and
    of ASCII's letters and digits (alone and as a ``##`` continuation, so that such words can
    always be spelled) and then the most frequent words. Counted here rather than by
    ``WordPieceTrainer``, whose ties between equally frequent merges fall out differently from
    one process to the next: one ``TINY_VERSION`` always yields the same vocabulary, and so
    the same weights."""

    from tokenizers import normalizers, pre_tokenizers

    normalize = normalizers.BertNormalizer(lowercase=True).normalize_str
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    words = Counter(w for line in corpus_text().splitlines() for w, _ in split(normalize(line)))
    chars = sorted({c for w in words for c in w} | set(string.ascii_lowercase + string.digits))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    room = EMBEDDING_VOCAB_SIZE - len(tokens)
    frequent = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))[:room]
    return {token: i for i, token in enumerate([*tokens, *frequent])}


def _write_tiny_embedding(folder: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    try:  # sentence-transformers 6 moved its modules; 3.x to 5.x have them here
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer  # type: ignore[no-redef]

    wordpiece = Tokenizer(models.WordPiece(_tiny_vocabulary(), unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=EMBEDDING_MAX_TOKENS,
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=EMBEDDING_MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(EMBEDDING_SEED)
    with tempfile.TemporaryDirectory(dir=folder.parent) as encoder:  # the plain BERT, wrapped
        BertModel(config).save_pretrained(encoder)
        tokenizer.save_pretrained(encoder)
        transformer = Transformer(encoder, max_seq_length=EMBEDDING_MAX_TOKENS)
        pooling = Pooling(config.hidden_size, pooling_mode="mean")
        SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
