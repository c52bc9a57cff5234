"""Bearer-key auth (constant-time compare), owner checks, image access, the per-key rate limit."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.common.errors import Overloaded, Unauthorized
from services.gateway import signing
from services.gateway.config import GatewaySettings
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.metrics import REJECTED

ANONYMOUS = "anonymous"
# Declares the scheme in the OpenAPI document (components.securitySchemes, and `security` on
# every route that needs a key); `authenticate` reads the header itself, for its own messages.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    bearerFormat="API key",
    description="`Authorization: Bearer <key>` with a key from ARTICLEFORGE_API_KEYS (auth is "
    "off when none is set). Image URLs in articles are signed and need no key.",
)


def key_scope(key: str) -> str:
    """A short, stable id for a key: used in Redis names and logs instead of the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def authenticate(
    request: Request,
    settings: SettingsDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> str:
    keys = settings.keys()
    if not keys:
        return ANONYMOUS
    header = request.headers.get("authorization", "").strip()
    scheme, _, given = header.partition(" ")
    if not header:
        raise Unauthorized(
            "missing `Authorization: Bearer <key>` header", headers={"WWW-Authenticate": "Bearer"}
        )
    if scheme.lower() == "bearer" and not given.strip():
        raise Unauthorized(
            "the Authorization header has `Bearer` but no key after it",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if scheme.lower() != "bearer":
        # Never echo what might be the key: a scheme is named only when it looks like one.
        named = f"the `{scheme}` scheme" if scheme.isalpha() and len(scheme) <= 10 else None
        found = "no `Bearer ` before the key" if " " not in header else named or "another scheme"
        raise Unauthorized(
            f"the Authorization header must read `Bearer <key>`; it has {found}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = given.strip()
    # Compare against every key, always, so timing says nothing about which one nearly matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.encode(), key.encode())
    if not matched:
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return key_scope(given)


KeyDep = Annotated[str, Depends(authenticate)]


def may_read(owner: str | None, scope: str) -> bool:
    """With auth off everything is readable; with keys, only what this key created."""
    return scope == ANONYMOUS or owner == scope


def authorize_image(
    request: Request,
    settings: GatewaySettings,
    image_id: str,
    expires: int,
    signature: str | None,
) -> str:
    """A valid signed URL needs no key (CMS pages embed them); anything else needs a key.

    Returns the ``Cache-Control`` the answer may carry: ``public`` only where anyone holding
    the URL may see it (a signed URL, until it expires; auth off), ``private`` for a keyed
    request, so that a shared cache never hands it to a client without the key.
    """
    year = 365 * 24 * 3600
    problem = "missing `Authorization: Bearer <key>` header or a signed image URL"
    if signature is not None:
        key: bytes = request.app.state.signing_key
        now = time.time()
        problem = signing.check(key, image_id, expires, signature, now) or ""
        if not problem:
            max_age = min(year, int(expires - now)) if expires else year
            return f"public, max-age={max_age}, immutable"
    if request.headers.get("authorization") or not settings.keys():
        scope = authenticate(request, settings)  # 401 on a bad key
        return f"{'public' if scope == ANONYMOUS else 'private'}, max-age={year}, immutable"
    param = None if signature is None else "signature"
    raise Unauthorized(problem, param=param, headers={"WWW-Authenticate": "Bearer"})


def rate_limited(scope: KeyDep, settings: SettingsDep, store: StoreDep) -> str:
    limit = settings.rate_limit_per_minute
    if limit:
        wait = store.hit_rate_limit(scope, limit)
        if wait is not None:
            REJECTED.labels("rate_limit").inc()
            raise Overloaded(
                f"rate limit of {limit} articles per minute reached for this key "
                "(ARTICLEFORGE_RATE_LIMIT_PER_MINUTE)",
                retry_after=wait,
            )
    return scope


RateLimitedKeyDep = Annotated[str, Depends(rate_limited)]
