"""Widget bounds read from the request models themselves, so the studio's sliders and inputs
stop where the API does (and follow it when a limit changes)."""

from __future__ import annotations

from dataclasses import dataclass

import annotated_types
from pydantic import BaseModel

# The browser holds widget values as doubles: integers beyond 2**53 - 1 (a seed's 2**63 - 1)
# cannot round-trip, so a bound above it stops there.
JS_MAX_INT = 2**53 - 1


@dataclass(frozen=True)
class Bounds:
    low: int | float | None = None  # inclusive (ge), or exclusive when `low_open`
    high: int | float | None = None
    low_open: bool = False  # gt rather than ge
    max_length: int | None = None

    def int_low(self) -> int:
        assert self.low is not None
        return int(self.low) + (1 if self.low_open else 0)

    def int_high(self) -> int:
        assert self.high is not None
        return min(int(self.high), JS_MAX_INT)


def bounds(model: type[BaseModel], name: str) -> Bounds:
    """The ge/gt/le/max_length constraints of ``model.name``."""
    low: float | None = None
    high: int | float | None = None
    low_open = False
    max_length: int | None = None
    for item in model.model_fields[name].metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge  # type: ignore[assignment]
        elif isinstance(item, annotated_types.Gt):
            low, low_open = item.gt, True  # type: ignore[assignment]
        elif isinstance(item, annotated_types.Le):
            high = item.le  # type: ignore[assignment]
        elif isinstance(item, annotated_types.MaxLen):
            max_length = item.max_length
    return Bounds(low, high, low_open, max_length)
