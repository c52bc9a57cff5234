"""Logging set-up shared by every process, with the request id on each line.

Secrets never reach a log line: the formatter masks, in the message and in tracebacks, what
looks like one (`Bearer ...`, `whsec_...`, the password of a URL, a `token=` or `signature=`
in a query string) and every value handed to
``redact_values`` (API keys, configured secrets), whichever library logged it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

MASK = "***"
_PATTERNS = [
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",]+"), rf"\g<1>{MASK}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), f"whsec_{MASK}"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\g<1>{MASK}@"),
    # Capabilities in query strings: a webhook URL's token, a signed image URL's signature.
    (
        re.compile(
            r"(?i)([?&](?:access_token|api_key|apikey|auth|key|password|secret|sig|signature|"
            r"token)=)[^&\s'\"#]+"
        ),
        rf"\g<1>{MASK}",
    ),
]
_values: set[str] = set()


def redact_values(values: Iterable[str]) -> None:
    """Masks these exact strings in every later log line of this process."""
    _values.update(v for v in values if len(v) >= 4)  # a tiny value would mask common words


def redact(text: str) -> str:
    for value in sorted(_values, key=len, reverse=True):
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """A URL fit to show: the password of ``redis://user:password@host`` masked."""
    return _PATTERNS[2][0].sub(_PATTERNS[2][1], url)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once; safe to call again (it replaces our handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_articleforge", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._articleforge = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        _RedactingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
