"""Sources for grounded articles: load them, split and rank their passages, check citations.

A pure library: no jobs, routes or storage. The pipeline loads a request's sources
(`load_sources`), splits the usable ones into passages (`split_passages`), gives each section
the passages `PassageIndex.search` ranks first for its heading, and passes what the model wrote
through `apply_citations`, which keeps markers that point at a given passage and removes the
rest. `references_markdown` / `references_html` and `link_markers_html` render the result.

Only loading does I/O (async; extraction runs in a worker thread). Splitting, indexing and the
citation functions are plain CPU work measured in milliseconds per article. `parse_networks`
checks ``allow_networks`` CIDRs, so that settings can refuse a bad one at start-up.
"""

from services.gateway.sources.citations import (
    Citation,
    CitedText,
    apply_citations,
    link_markers_html,
    references_html,
    references_markdown,
)
from services.gateway.sources.fetch import parse_networks
from services.gateway.sources.load import load_source, load_sources
from services.gateway.sources.models import (
    FETCH_TIMEOUT_S,
    MAX_REDIRECTS,
    MAX_SOURCES,
    SOURCE_MAX_BYTES,
    SOURCE_MAX_CHARS,
    FileSource,
    Source,
    SourceError,
    SourceErrorType,
    SourceInfo,
    SourceSpec,
    SourceSpecs,
    TextSource,
    UrlSource,
)
from services.gateway.sources.passages import (
    Passage,
    PassageIndex,
    split_passages,
    summary,
    tokenize,
)

__all__ = [
    "FETCH_TIMEOUT_S",
    "MAX_REDIRECTS",
    "MAX_SOURCES",
    "SOURCE_MAX_BYTES",
    "SOURCE_MAX_CHARS",
    "Citation",
    "CitedText",
    "FileSource",
    "Passage",
    "PassageIndex",
    "Source",
    "SourceError",
    "SourceInfo",
    "SourceErrorType",
    "SourceSpec",
    "SourceSpecs",
    "TextSource",
    "UrlSource",
    "apply_citations",
    "link_markers_html",
    "load_source",
    "load_sources",
    "parse_networks",
    "references_html",
    "references_markdown",
    "split_passages",
    "summary",
    "tokenize",
]
