"""Grounded articles through the whole system (issue 25): real processes on the tiny models, a
real site of source pages on 127.0.0.1 and a real WordPress.

The article is asked for with six URL sources: an article page with menus and a footer, a PDF,
a redirect to the cloud metadata address, a 40 MiB page, a page with no text and a page that
robots.txt disallows. The gateway may reach 127.0.0.1 (ARTICLEFORGE_SOURCES_ALLOW_NETWORKS)
and nothing else that is not public. What a user sees:

* the status lists every source, the four bad ones each with its own error type;
* the prompts the real tiny text engine receives (its DEBUG log) carry the outline's source
  list and, per section, numbered passages of the two good sources, word for word;
* the text is written by a LoRA adapter trained here, in seconds, on the tiny base to write
  prose full of markers (``[1]``, ``[2]`` and the invented ``[9]``), so the citation rules act
  on what a model really wrote. Each logged section prompt is sent to the engine again (greedy
  decoding, as the article asked) to learn what it wrote; the article's section is exactly
  that, with each marker in range renumbered article-wide and linked, and each one out of
  range removed and counted in the provenance;
* ``citations[]`` hold the very passages, at their offsets in the source texts that
  GET /v1/articles/{id}/sources returns; the references list ends the Markdown, the HTML, both
  exports and the WordPress post (read back through WordPress's REST API);
* an article whose sources are all unusable fails at stage ``sources`` without a model call.
"""

from __future__ import annotations

import html
import json
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.source_pages import (
    BOILERPLATE,
    HUGE_BYTES,
    METADATA_URL,
    TIDAL_TITLE,
    WIND_PAGES,
    WIND_TITLE,
    source_pages,
)
from tests.e2e.stack import Stack
from tests.e2e.stack import stack as whole_stack
from tests.page_site import Site
from tests.processes import until
from tests.publish.wordpress_site import WordPressSite, missing

pytestmark = pytest.mark.e2e

API_KEY = "sk-grounded"
SECRET = "whsec_Z3JvdW5kZWQtYXJ0aWNsZXMtdGVzdC1zZWNyZXQtMDE="
SOURCE_MAX_BYTES = 10 * 1024 * 1024  # the documented limit of a fetched document

# What the adapter is trained to write after any prompt: section-like prose whose markers point
# at the first passages ([1], [2]) and at one that no section is given ([9]; at most 4 are).
# Greedy decoding does not give it back word for word (see below), so the tests ask the engine
# what it wrote instead of expecting this text.
CITING_TEXT = (
    "Tidal power follows the moon [1]. The first station opened in 1966 [2]. "
    "It will light the whole moon by 2030 [9]. Engineers still study it [1]."
)
# 80 steps of 4 rows at 3e-3, alpha = r (scale 1), no dropout: about 15 s on one CPU thread,
# and every token of a training row is then the model's first choice. Written freely after a
# real section prompt, the text still slips: the markers' " [" and "]" are also the tokens of
# the chat template's " [/INST]", after which the article starts, so the first marker tends to
# end in "]Tidal power..." or turn into [9]; the sections here still get markers in range and
# out of it. Tried: tiny.yaml's 40 steps at 5e-3 with alpha 16 write only [1]; 1e-2 and up
# degrade into fragments or a row of dots within 60-100 steps; 160 steps at 3e-3 slip at the
# same places (the random lm_head, which LoRA leaves alone, caps each token's lead over the
# next at ~0.8 logits; TRL refuses a LoRA on lm_head).
ADAPTER_SETTINGS: dict[str, Any] = {
    "max_steps": 80,
    "learning_rate": 3e-3,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "max_length": 2048,  # prompts as long as a section's with its passages (~900 tokens)
    "validation_fraction": 0.1,
    "gradient_checkpointing": False,
    "evaluate": False,
}

ROOT = Path(__file__).resolve().parents[2]
# A prompt-log record of the text service (services/text/request.py, at DEBUG).
PROMPT_LOG = re.compile(r"request (\S+): (\d+) prompt tokens: (.*?\[/INST\])", re.S)
PASSAGE = re.compile(r'\[(\d+)\] \((.*?)\) "(.*?)"(?= \[\d+\] \(| Use only facts)', re.S)
# Citation-like brackets (services/gateway/sources/citations.py's rule for the characters a
# model's text can hold here), a run of them separated by spaces or tabs, and a valid one.
BRACKET = r"\[[\d \t,;.^-]*\]"
CITATION_RUN = re.compile(
    rf"(?P<lead>[ \t]*)(?P<run>{BRACKET}(?:[ \t]*{BRACKET})*)(?P<trail>[ \t]*)"
)
VALID = re.compile(r"\s*\^?\d+\s*(?:[,;]\s*\^?\d+\s*)*")


def citing_rows(path: Path, rows: int = 32, seed: int = 0) -> Path:
    """Training rows whose prompts are any words, short or long, and whose article is always
    CITING_TEXT, so that the adapter writes it whatever it is asked."""
    from services.common.tiny import corpus_text

    words = corpus_text().split()
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            length = rng.choice([5, 20, 80, 200, 400, 600])
            row = {
                "topic": " ".join(rng.choice(words) for _ in range(length)),
                "audience": rng.choice(["readers", "engineers", "students"]),
                "tone": rng.choice(["calm", "plain", "warm"]),
                "article": CITING_TEXT,
            }
            out.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def citing_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_text_path: Path) -> Path:
    """A LoRA adapter of the tiny model that cites, trained by the project's trainer."""
    import torch

    from training.train import load_config, main

    folder = tmp_path_factory.mktemp("citing")
    config = load_config(
        ROOT / "training" / "configs" / "tiny.yaml",
        {
            **ADAPTER_SETTINGS,
            "data": str(citing_rows(folder / "rows.jsonl")),
            "output_dir": str(folder / "adapter"),
        },
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only waits on the first
    try:
        return main(config)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pages() -> Iterator[Site]:
    with source_pages() as site:
        yield site


@pytest.fixture(scope="module")
def wordpress() -> Iterator[WordPressSite | None]:
    """A real WordPress to publish into; None (and its test skipped) where it cannot run."""
    if missing():
        yield None
        return
    site = WordPressSite(webhook_secret=SECRET).start()
    yield site
    site.stop()


@dataclass
class GroundedStack:
    """The whole stack (tests/e2e/stack.py) with the citing adapter in its text service."""

    base: Stack
    publishes: bool  # to the WordPress site

    @property
    def text(self) -> str:
        return self.base.env["ARTICLEFORGE_TEXT_URL"]

    def client(self) -> httpx.Client:
        client = self.base.client()
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        return client

    def prompts(self) -> list[str]:
        """Every prompt the text engine was given so far, as its log shows it."""
        log = (self.base.logs / "text.log").read_text(errors="replace")
        return [m.group(3) for m in PROMPT_LOG.finditer(log)]


@pytest.fixture(scope="module")
def stack(
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    citing_adapter: Path,
    wordpress: WordPressSite | None,
) -> Iterator[GroundedStack]:
    env = {
        "ARTICLEFORGE_API_KEYS": API_KEY,
        "ARTICLEFORGE_WEBHOOK_SECRET": SECRET,  # the WordPress site's
        # The source pages are on loopback; every other address that is not public stays
        # refused (169.254.169.254 among them).
        "ARTICLEFORGE_SOURCES_ALLOW_NETWORKS": "127.0.0.1/32",
        "ARTICLEFORGE_PUBLISH_RETRY_INTERVALS": "1,1",
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "2",
        "ARTICLEFORGE_SERVICE_BACKOFF_SECONDS": "0.2",
        # Two torch services on a shared machine: one thread each, or they spin on each other.
        "OMP_NUM_THREADS": "1",
    }
    if wordpress is not None:
        env["ARTICLEFORGE_PUBLISH_WORDPRESS_URL"] = wordpress.url
        env["ARTICLEFORGE_PUBLISH_WORDPRESS_USER"] = wordpress.user
        env["ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD"] = wordpress.app_password
    text = {
        "ARTICLEFORGE_LOG_LEVEL": "DEBUG",  # every prompt in the log
        "ARTICLEFORGE_TEXT_ADAPTER": f"citing={citing_adapter}",  # merged: the default model
    }
    tmp = tmp_path_factory.mktemp("grounded")
    with whole_stack(cache_dir, tmp, redis_url, 1, env, {"text": text}) as base:
        yield GroundedStack(base, publishes=wordpress is not None)


def finished(client: httpx.Client, article_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(f"/v1/articles/{article_id}").json()
        return status if status["status"] in ("succeeded", "failed", "cancelled") else None

    return dict(until(f"article {article_id} to finish", done, timeout=timeout, every=0.3))


def published(client: httpx.Client, article_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        state = client.get(f"/v1/articles/{article_id}").json()["publish"].get("wordpress")
        return state if state and state["state"] in ("published", "failed") else None

    return dict(until("the WordPress post", done, timeout=60, every=0.3))


def section_prompts(prompts: list[str], title: str) -> dict[int, str]:
    """The user turn of each section prompt of the article titled ``title``, by section."""
    found = {}
    for prompt in prompts:
        user = prompt.split("<</SYS>>", 1)[-1].strip().removesuffix("[/INST]").strip()
        match = re.search(r'Now write only section (\d+), "', user)
        if match and f'The article is titled "{title}"' in user:
            found[int(match.group(1)) - 1] = user
    return found


def settled(raw: str, numbers: dict[int, int]) -> tuple[str, int]:
    """What the issue says becomes of a section's text, worked out here from the text alone.

    ``numbers`` maps the section's passage numbers to the article's. A run of adjacent
    citation-like brackets keeps, once each and ascending, the article numbers of the markers
    in range; the rest are removed, and counted (a malformed bracket counts once). A run that
    keeps nothing goes with the spaces before it (after it, at the start of a line)."""
    removed = 0

    def rewrite(run: re.Match[str]) -> str:
        nonlocal removed
        kept: set[int] = set()
        for content in re.findall(r"\[([^\]]*)\]", run.group("run")):
            if not VALID.fullmatch(content):
                removed += 1
                continue
            for n in map(int, re.findall(r"\d+", content)):
                if n in numbers:
                    kept.add(numbers[n])
                else:
                    removed += 1
        if kept:
            return run.group("lead") + "".join(f"[{m}]" for m in sorted(kept)) + run.group("trail")
        at_line_start = run.start() == 0 or raw[run.start() - 1] == "\n"
        return "" if at_line_start else run.group("trail")

    return CITATION_RUN.sub(rewrite, raw), removed


def plain_markdown(markdown: str) -> str:
    """A section's Markdown as a reader sees it: the gateway escapes brackets (``\\[1\\]``)
    and HTML's special characters so that model text can make no link or tag."""
    return html.unescape(markdown.replace("\\[", "[").replace("\\]", "]"))


def written(stack: GroundedStack, prompt: str, heading: str, max_new_tokens: int) -> str:
    """What the text engine writes for a section ``prompt`` under greedy decoding, asked again
    the way the pipeline asks (its system prompt and budget), and cleaned the way the pipeline
    cleans every section before it looks at the markers."""
    from services.gateway.pipeline import SYSTEM, clean_section

    reply = httpx.post(
        f"{stack.text}/v1/generate",
        json={
            "system": SYSTEM,
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": 0,
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return clean_section(reply.json()["text"], heading)


PATHS = [  # src_1 .. src_6
    "/tidal-power.html",
    "/moved",
    "/huge.html",
    "/offshore-wind.pdf",
    "/gallery.html",
    "/members/briefing.html",
]


@dataclass
class Grounded:
    """One finished grounded article and everything read back about it."""

    body: dict[str, Any]
    status: dict[str, Any]
    texts: dict[str, str]  # source id -> its text, from GET /v1/articles/{id}/sources
    export_md: httpx.Response
    export_html: httpx.Response
    post_state: dict[str, Any] | None  # the status's publish.wordpress, once settled
    prompts: dict[int, str]  # section -> the prompt the text engine got for it
    given: dict[int, dict[int, str]]  # section -> passage number -> passage, from the prompt

    @property
    def article(self) -> dict[str, Any]:
        return dict(self.status["article"])

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in self.status["sources"]}

    def source_of(self, passage: str) -> str:
        [found] = [i for i, text in self.texts.items() if passage in text]
        return found


@pytest.fixture(scope="module")
def grounded(stack: GroundedStack, pages: Site) -> Grounded:
    body: dict[str, Any] = {
        "topic": "Tidal power",
        "sections": 2,
        "target_words": 120,
        "text": {"temperature": 0},  # greedy: the engine writes the same text when asked again
        "images": {"count": 1, "steps": 2},
        "sources": [{"type": "url", "url": pages.url(p)} for p in PATHS],
    }
    if stack.publishes:
        body["publish"] = {"target": "wordpress", "status": "publish"}
    with stack.client() as client:
        accepted = client.post("/v1/articles", json=body)
        assert accepted.status_code == 202, accepted.text
        article_id = accepted.json()["id"]
        status = finished(client, article_id)
        assert status["status"] == "succeeded", status["error"]
        kept = client.get(f"/v1/articles/{article_id}/sources").json()["data"]
        export_md = client.get(f"/v1/articles/{article_id}/export.md")
        export_html = client.get(f"/v1/articles/{article_id}/export.html")
        post_state = published(client, article_id) if stack.publishes else None
    prompts = section_prompts(stack.prompts(), status["article"]["title"])
    given = {
        k: {int(n): passage for n, _, passage in PASSAGE.findall(prompt)}
        for k, prompt in prompts.items()
    }
    return Grounded(
        body=body,
        status=status,
        texts={s["id"]: s["text"] for s in kept},
        export_md=export_md,
        export_html=export_html,
        post_state=post_state,
        prompts=prompts,
        given=given,
    )


def test_every_source_is_listed_and_each_bad_one_says_why(grounded: Grounded, pages: Site) -> None:
    listed = grounded.sources
    assert list(listed) == [f"src_{k}" for k in range(1, 7)]
    errors = {i: (s["error"] or {}).get("type") for i, s in listed.items()}
    assert errors == {
        "src_1": None,
        "src_2": "private_address",
        "src_3": "too_large",
        "src_4": None,
        "src_5": "no_text",
        "src_6": "robots_disallowed",
    }
    for k, (source_id, source) in enumerate(listed.items()):
        assert source["url"] == pages.url(PATHS[k])
        assert "text" not in source  # the texts are at /sources, not in every status poll
        if source["error"]:
            assert source["error"]["message"].startswith(f"Source {source_id} ({source['url']})")
            assert source["chars"] == 0 and grounded.texts[source_id] == ""
    assert METADATA_URL in listed["src_2"]["error"]["message"]
    assert "10 MiB" in listed["src_3"]["error"]["message"]
    # The download stopped at the limit: the page server could not send all of it.
    assert SOURCE_MAX_BYTES < pages.streamed["/huge.html"] < HUGE_BYTES
    assert pages.hits["/members/briefing.html"] == 0 and pages.hits["/robots.txt"] >= 1

    page, pdf = listed["src_1"], listed["src_4"]
    assert (page["title"], page["media_type"]) == (TIDAL_TITLE, "text/html")
    assert (pdf["title"], pdf["media_type"]) == (WIND_TITLE, "application/pdf")
    for source in (page, pdf):
        assert source["chars"] == len(grounded.texts[source["id"]]) > 0
        assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
    # The page's paragraphs, not its menu, newsletter box or footer; the PDF's text.
    tidal, wind = grounded.texts["src_1"], grounded.texts["src_4"]
    assert "The Rance tidal power station, opened in 1966" in tidal
    assert [b for b in BOILERPLATE if b in tidal] == []
    assert " ".join(WIND_PAGES[0].split()) in " ".join(wind.split())


def test_the_text_engine_gets_the_passages_of_the_usable_sources(
    grounded: Grounded, stack: GroundedStack
) -> None:
    outline_prompt = next(p for p in stack.prompts() if "Plan the article" in p)
    assert f'"{TIDAL_TITLE}": ' in outline_prompt and f'"{WIND_TITLE}": ' in outline_prompt
    refused = [s["url"] for s in grounded.sources.values() if s["error"]]
    assert [url for url in refused if url in outline_prompt] == []

    assert sorted(grounded.prompts) == [0, 1]
    titles = set()
    for prompt in grounded.prompts.values():
        assert "Sources for this section: [1] (" in prompt
        passages = PASSAGE.findall(prompt)
        assert [int(n) for n, _, _ in passages] == list(range(1, len(passages) + 1))
        assert 1 <= len(passages) <= 4
        for _, title, passage in passages:
            # Word for word from the source whose title it bears.
            source_id = grounded.source_of(passage)
            assert grounded.sources[source_id]["title"] == title
            titles.add(title)
        assert "tide tide" not in prompt and "169.254" not in prompt  # nothing refused
    assert titles == {TIDAL_TITLE, WIND_TITLE}


def test_kept_markers_are_renumbered_and_linked_and_invented_ones_removed(
    grounded: Grounded, stack: GroundedStack
) -> None:
    from services.gateway.pipeline import Outline, section_budget
    from services.gateway.schemas import ArticleRequest

    article = grounded.article
    headings = [s["heading"] for s in article["sections"]]
    outline = Outline(article["title"], headings)
    _, max_new = section_budget(ArticleRequest.model_validate(grounded.body), outline)
    raw = {
        k: written(stack, prompt, headings[k], max_new)
        for k, prompt in sorted(grounded.prompts.items())
    }

    # Sources are numbered in order of first citation: read left to right, section by section.
    numbering: dict[str, int] = {}
    for k in sorted(raw):
        for content in re.findall(BRACKET, raw[k]):
            if VALID.fullmatch(content[1:-1]):
                for n in map(int, re.findall(r"\d+", content)):
                    if n in grounded.given[k]:
                        source_id = grounded.source_of(grounded.given[k][n])
                        numbering.setdefault(source_id, len(numbering) + 1)
    removed_total = kept_total = 0
    for k, section in enumerate(article["sections"]):
        numbers = {
            n: numbering[grounded.source_of(p)]
            for n, p in grounded.given[k].items()
            if grounded.source_of(p) in numbering
        }
        expected, removed = settled(raw[k], numbers)
        assert plain_markdown(section["markdown"]) == expected, raw[k]
        removed_total += removed
        markers = re.findall(r"\[(\d+)\]", expected)
        kept_total += len(markers)
        for m in markers:
            assert f'<a href="#ref-{m}">[{m}]</a>' in section["html"]
    # The adapter wrote both kinds, so the rules were exercised, not skipped.
    assert kept_total > 0 and removed_total > 0, f"the citing adapter wrote no markers: {raw}"
    assert article["provenance"]["invented_citations_removed"] == removed_total

    # Each kept marker is a citation of the passage it pointed at, at its place in the source.
    cited = {
        (k, grounded.given[k][n])
        for k in raw
        for n in map(int, re.findall(r"\[(\d+)\]", raw[k]))
        if n in grounded.given[k]
    }
    citations = article["citations"]
    assert {(c["section"], c["passage"]) for c in citations} == cited
    for citation in citations:
        source_text = grounded.texts[citation["source_id"]]
        assert source_text[citation["start"] : citation["end"]] == citation["passage"]
        assert citation["marker"] == numbering[citation["source_id"]]
        assert citation["source_id"] == grounded.source_of(citation["passage"])


def check_references(fragment: str, grounded: Grounded, where: str) -> None:
    """``fragment`` (HTML) ends with the references list of the cited sources, in marker
    order, with the ids that its markers' links point at."""
    root = ET.fromstring(f"<div>{fragment}</div>")  # well-formed, or this raises
    cited = {c["marker"]: grounded.sources[c["source_id"]] for c in grounded.article["citations"]}
    items = [li for li in root.iter("li") if li.get("id")]
    assert [li.get("id") for li in items] == [f"ref-{m}" for m in sorted(cited)], where
    for li, m in zip(items, sorted(cited), strict=True):
        source = cited[m]
        assert "".join(li.itertext()) == f"{source['title']}. {source['url']}", where
        assert [a.get("href") for a in li.iter("a")] == [source["url"]], where
    links = {a.get("href") for a in root.iter("a") if (a.text or "").startswith("[")}
    assert links == {f"#ref-{m}" for m in cited}, where


def test_the_references_end_every_form_of_the_article(grounded: Grounded) -> None:
    article = grounded.article
    cited = {c["marker"]: grounded.sources[c["source_id"]] for c in article["citations"]}
    assert cited, "nothing was cited"
    lines = [f"{m}. {cited[m]['title']}. <{cited[m]['url']}>" for m in sorted(cited)]
    references = "## References\n\n" + "\n".join(lines) + "\n"
    assert article["markdown"].endswith(references)
    assert grounded.export_md.status_code == 200
    assert grounded.export_md.text.endswith(references)
    uncited = [s for s in grounded.sources.values() if s not in cited.values()]
    assert uncited and not [s for s in uncited if s["url"] in article["markdown"]]

    check_references(article["html"], grounded, "article html")
    page = grounded.export_html.text
    assert grounded.export_html.status_code == 200
    check_references(
        page[page.index("<article>") + len("<article>") : page.index("</article>")],
        grounded,
        "page",
    )


def test_the_wordpress_post_keeps_the_links_and_the_references(
    grounded: Grounded, wordpress: WordPressSite | None
) -> None:
    if wordpress is None:
        pytest.skip(f"no real WordPress here: {missing()}")
    assert grounded.post_state is not None and grounded.post_state["state"] == "published"
    with wordpress.api() as api:
        reply = api.get(
            f"/wp/v2/posts/{grounded.post_state['post_id']}", params={"context": "edit"}
        )
        reply.raise_for_status()
    post = reply.json()
    check_references(post["content"]["raw"], grounded, "WordPress post")
    rendered = post["content"]["rendered"]  # what the site's readers get
    for c in grounded.article["citations"]:
        assert f'id="ref-{c["marker"]}"' in rendered and f'href="#ref-{c["marker"]}"' in rendered


def test_an_article_whose_sources_are_all_unusable_fails_at_the_sources(
    stack: GroundedStack, pages: Site
) -> None:
    topic = "Instance metadata services"
    body = {
        "topic": topic,
        "sections": 1,
        "images": {"count": 0},
        "sources": [
            {"type": "url", "url": pages.url("/moved")},
            {"type": "url", "url": pages.url("/gallery.html")},
        ],
    }
    with stack.client() as client:
        accepted = client.post("/v1/articles", json=body)
        assert accepted.status_code == 202, accepted.text
        article_id = accepted.json()["id"]
        status = finished(client, article_id)
        kept = client.get(f"/v1/articles/{article_id}/sources").json()["data"]
    assert status["status"] == "failed" and status["article"] is None
    error = status["error"]
    assert (error["stage"], error["type"]) == ("sources", "sources_unusable"), error
    assert "none of the 2 sources could be used" in error["message"]
    assert METADATA_URL in error["message"] and "no extractable text" in error["message"]
    assert [(s["id"], s["error"]["type"]) for s in status["sources"]] == [
        ("src_1", "private_address"),
        ("src_2", "no_text"),
    ]
    assert [(s["id"], s["text"]) for s in kept] == [("src_1", ""), ("src_2", "")]
    # It failed before the outline: the text engine was never asked about it.
    assert [p for p in stack.prompts() if topic in p] == []
