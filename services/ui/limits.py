"""Widget bounds read from the request models themselves, so the studio's sliders and inputs
stop where the API does (and follow it when a limit changes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

# The browser holds widget values as doubles: integers beyond 2**53 - 1 (the text service's
# 2**63 - 1 seed) cannot round-trip, so a bound above it stops there.
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

    def float_low(self, step: float = 0.0) -> float:
        """A slider's lowest stop: the bound, or one ``step`` above an exclusive one."""
        assert self.low is not None
        return float(self.low) + (step if self.low_open else 0.0)

    def float_high(self) -> float:
        assert self.high is not None
        return float(self.high)


def _constraints(annotation: Any) -> list[Any]:
    """The metadata of the ``Annotated`` types in ``annotation`` (``Seed | None`` holds the
    shared type of services.common.limits inside the union)."""
    found: list[Any] = []
    if get_origin(annotation) is Annotated:
        for item in get_args(annotation)[1:]:
            found += item.metadata if isinstance(item, FieldInfo) else [item]
        return found
    for arg in get_args(annotation):
        found += _constraints(arg)
    return found


def bounds(model: type[BaseModel], name: str) -> Bounds:
    """The ge/gt/le/max_length constraints of ``model.name``, on the field or in its type."""
    low: float | None = None
    high: int | float | None = None
    low_open = False
    max_length: int | None = None
    field = model.model_fields[name]
    for item in [*_constraints(field.annotation), *field.metadata]:
        if isinstance(item, annotated_types.Ge):
            low = item.ge  # type: ignore[assignment]
        elif isinstance(item, annotated_types.Gt):
            low, low_open = item.gt, True  # type: ignore[assignment]
        elif isinstance(item, annotated_types.Le):
            high = item.le  # type: ignore[assignment]
        elif isinstance(item, annotated_types.MaxLen):
            max_length = item.max_length
    return Bounds(low, high, low_open, max_length)
