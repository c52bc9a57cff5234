"""The batch's parts on their own: the publishing calendar, the links between its articles, the
CSV reader, and the publish metrics' collector."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from services.common.errors import Unprocessable
from services.gateway.batches import calendar, csv_items, links
from services.gateway.batches.schemas import Schedule
from services.gateway.publish import metrics

# --- the calendar ---


def iso(moments: list[datetime]) -> list[str]:
    return [m.strftime("%Y-%m-%dT%H:%M:%SZ") for m in moments]


def test_times_keep_their_wall_clock_across_the_autumn_change() -> None:
    # New York leaves daylight saving time at 02:00 on 2031-11-02: 09:00 is 13:00Z, then 14:00Z.
    schedule = Schedule(start=date(2031, 11, 1), times=["09:00"], timezone="America/New_York")
    assert iso(calendar.take(schedule, 3)) == [
        "2031-11-01T13:00:00Z",
        "2031-11-02T14:00:00Z",
        "2031-11-03T14:00:00Z",
    ]


def test_a_start_moment_skips_the_earlier_times_of_its_day() -> None:
    schedule = Schedule(
        start=datetime(2031, 5, 4, 12, 0), times=["09:00", "18:00"], every="2d", timezone="UTC"
    )
    assert iso(calendar.take(schedule, 3)) == [
        "2031-05-04T18:00:00Z",  # 09:00 is before the start
        "2031-05-06T09:00:00Z",  # every second day
        "2031-05-06T18:00:00Z",
    ]


def test_without_times_the_slots_step_from_the_start() -> None:
    start = datetime(2031, 5, 4, 10, 15, tzinfo=ZoneInfo("Asia/Tokyo"))
    schedule = Schedule(start=start, every="90m")
    assert iso(calendar.take(schedule, 3)) == [
        "2031-05-04T01:15:00Z",
        "2031-05-04T02:45:00Z",
        "2031-05-04T04:15:00Z",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"every": "0d"}, "every must be a positive number"),
        ({"every": "1y"}, "every must be a positive number"),
        ({"times": ["9:00"]}, "HH:MM"),
        ({"times": ["09:00", "09:00"]}, "must not repeat"),
        ({"times": ["09:00"], "every": "6h"}, "whole days"),
    ],
)
def test_a_bad_schedule_says_what_is_wrong(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule.model_validate({"start": "2031-01-01", **fields})


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    day=st.dates(min_value=date(2030, 1, 1), max_value=date(2034, 12, 31)),
    times=st.lists(
        st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 45])),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    every=st.sampled_from(["1d", "2d", "1w"]),
)
def test_slots_rise_start_at_or_after_the_start_and_keep_their_clock_times(
    zone: str, day: date, times: list[tuple[int, int]], every: str
) -> None:
    clocks = [f"{h:02d}:{m:02d}" for h, m in times]
    schedule = Schedule(start=day, times=clocks, every=every, timezone=zone)
    slots = calendar.take(schedule, 12)
    begin = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(zone))
    assert slots[0] >= begin
    assert all(a < b for a, b in zip(slots, slots[1:], strict=False))
    minutes = [int(c[:2]) * 60 + int(c[3:]) for c in clocks]
    for moment in slots:
        wall = moment.astimezone(ZoneInfo(zone))
        at = wall.hour * 60 + wall.minute
        # A clock time asked for, or one that a daylight saving change skipped, moved forward
        # by the gap (at most an hour).
        assert any(0 <= at - m <= 60 for m in minutes), (wall, clocks)


def test_an_unknown_zone_is_named() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        calendar.zone("Mars/Olympus")


# --- links between the batch's articles ---

LINKS = {
    "heat pumps": "https://blog.example/heat-pumps/",
    "solar": "https://blog.example/s?a=1&b=2",
}


def test_the_first_mention_in_running_text_is_linked_and_nothing_else() -> None:
    html = (
        "<h2>Heat pumps</h2><p>Old houses and <em>heat pumps</em>: heat pumps again. "
        "Solar-powered?</p><figure><figcaption>solar roofs</figcaption></figure>"
        '<p><a href="/x">heat pumps</a> and solar</p><pre><code>solar</code></pre>'
    )
    out = links.link_fragment(html, LINKS)
    assert out == (
        "<h2>Heat pumps</h2><p>Old houses and <em>"
        '<a href="https://blog.example/heat-pumps/">heat pumps</a></em>: heat pumps again. '
        '<a href="https://blog.example/s?a=1&amp;b=2">Solar</a>-powered?</p>'
        "<figure><figcaption>solar roofs</figcaption></figure>"
        '<p><a href="/x">heat pumps</a> and solar</p><pre><code>solar</code></pre>'
    )


def test_a_topic_matches_whole_words_across_spacing_and_escaped_characters() -> None:
    assert links.link_fragment("<p>solarium</p>", {"solar": "u"}) == "<p>solarium</p>"
    assert (
        links.link_fragment("<p>R&amp;D  budgets grow</p>", {"R&D budgets": "u"})
        == '<p><a href="u">R&amp;D  budgets</a> grow</p>'
    )


# --- the CSV reader ---


def test_csv_rows_keep_quoted_commas_and_skip_blank_lines() -> None:
    text = 'topic,keywords,images\n"Heat, pumps","a;b ; ;c",2\n,,\n\nSolar,,\n'
    items, lines = csv_items.rows(text)
    assert items == [
        {"topic": "Heat, pumps", "keywords": ["a", "b", "c"], "images": {"count": 2}},
        {"topic": "Solar"},
    ]
    assert lines == [2, 5]


def test_a_row_longer_than_the_header_is_refused_with_its_line() -> None:
    with pytest.raises(Unprocessable, match="CSV line 3 has 3 cells but the header names 2"):
        csv_items.rows("topic,words\nA b c,100\nD e f,100,extra\n")


def test_each_item_field_names_its_column() -> None:
    assert csv_items.column_of(("images", "count")) == "images"
    assert csv_items.column_of(("images", "style")) == "style"
    assert csv_items.column_of(("publish", "at")) == "publish_at"
    assert csv_items.column_of(("keywords", 0)) == "keywords"
    assert csv_items.column_of(("text", "seed")) is None


# --- the publish metrics ---


def test_the_collector_shows_what_the_workers_counted(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    metrics.attempt(connection, "wordpress", "retried", 0.3)
    metrics.attempt(connection, "wordpress", "ok", 1.7)
    metrics.finished(connection, "wordpress", "published", 2)
    metrics.attempt(connection, "ghost", "failed", 40.0)
    metrics.finished(connection, "ghost", "failed", 1)
    collector = metrics.PublishCollector()
    collector.load(connection)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    connection.flushdb()
    for line in (
        'articleforge_gateway_publish_total{outcome="published",target="wordpress"} 1.0',
        'articleforge_gateway_publish_total{outcome="failed",target="ghost"} 1.0',
        'articleforge_gateway_publish_attempts_total{result="retried",target="wordpress"} 1.0',
        'articleforge_gateway_publish_attempts_total{result="ok",target="wordpress"} 1.0',
        'articleforge_gateway_publish_duration_seconds_bucket{le="0.5",target="wordpress"} 1.0',
        'articleforge_gateway_publish_duration_seconds_bucket{le="2.5",target="wordpress"} 2.0',
        'articleforge_gateway_publish_duration_seconds_bucket{le="30.0",target="ghost"} 0.0',
        'articleforge_gateway_publish_duration_seconds_bucket{le="+Inf",target="ghost"} 1.0',
        'articleforge_gateway_publish_duration_seconds_count{target="wordpress"} 2.0',
        'articleforge_gateway_publish_duration_seconds_sum{target="wordpress"} 2.0',
        'articleforge_gateway_publish_attempts_per_publish_bucket{le="1.0",target="wordpress"} 0.0',
        'articleforge_gateway_publish_attempts_per_publish_bucket{le="2.0",target="wordpress"} 1.0',
    ):
        assert line in text, line
