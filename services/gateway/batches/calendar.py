"""The publishing calendar: the moments a batch's ``schedule`` gives its items, in UTC.

With ``times``, the slots are those clock times on ``start``'s day, then on the day ``every``
later, and so on, each read in ``timezone`` (so 09:00 stays 09:00 across a daylight saving
change, and a time the change skips moves forward by the gap, as ``zoneinfo`` does). Without
``times`` they are ``start``, ``start + every``, ... No slot comes before ``start``; a start
given as a day skips that day's times already past (a batch sent at noon "from today" begins
with today's 17:30).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.gateway.batches.schemas import EVERY, Schedule

UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"schedule.timezone must be an IANA time zone such as Europe/Berlin; got {name!r}"
        ) from None


def step(every: str) -> timedelta:
    found = EVERY.match(every)
    assert found is not None  # Schedule checked it
    count, unit = int(found.group(1)), found.group(2)
    return count * (timedelta(weeks=1) if unit == "w" else UNITS[unit])


def first_moment(schedule: Schedule, tz: ZoneInfo) -> datetime:
    start = schedule.start
    if not isinstance(start, datetime):
        start = datetime.combine(start, time(0))
    if start.tzinfo is None:
        start = start.replace(tzinfo=tz)
    return start.astimezone(UTC)


def _local(day: date, clock: str, tz: ZoneInfo) -> datetime:
    hour, minute = (int(part) for part in clock.split(":"))
    wall = datetime.combine(day, time(hour, minute), tzinfo=tz)
    # A wall time a daylight saving change skips does not exist: the round trip through UTC
    # moves it forward by the gap.
    return wall.astimezone(UTC).astimezone(tz).astimezone(UTC)


def slots(schedule: Schedule, not_before: datetime | None = None) -> Iterator[datetime]:
    """The schedule's moments in UTC, in order, without end; none before ``not_before``."""
    tz = zone(schedule.timezone)
    begin, gap = first_moment(schedule, tz), step(schedule.every)
    if not_before is not None and not_before > begin:
        begin = not_before
    if not schedule.times:
        moment = begin
        while True:
            yield moment
            moment += gap
    day = begin.astimezone(tz).date()
    while True:
        for clock in schedule.times:
            moment = _local(day, clock, tz)
            if moment >= begin:
                yield moment
        day += timedelta(days=gap.days)


def take(schedule: Schedule, count: int, not_before: datetime | None = None) -> list[datetime]:
    found: list[datetime] = []
    for moment in slots(schedule, not_before):
        if len(found) == count:
            break
        found.append(moment)
    return found
