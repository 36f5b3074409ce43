"""One call's RFC 8693 request (§2.1), checked and named before anything is sent.

The form is built once per call; client authentication is added per attempt (auth.py). The cache
entry's name covers everything that defines what the token grants (see cache.py for why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from exchange.client.cache import ReuseCache
from schemas.wire import GRANT_TOKEN_EXCHANGE


@dataclass(frozen=True, slots=True)
class Prepared:
    """One prepared request. It holds tokens, so its repr shows neither the form nor the key."""

    purpose: str
    audience: str | None
    form: dict[str, str] = field(repr=False)
    key: bytes = field(repr=False)


def prepare(
    cache: ReuseCache,
    purpose: str,
    subject_token: str,
    audience: str | None,
    details: Sequence[Mapping[str, Any]] | None,
    actor_token: str | None,
    subject_token_type: str,
    actor_token_type: str,
) -> Prepared:
    """The request for these arguments; TypeError/ValueError for arguments no exchange could accept."""
    if not isinstance(purpose, str) or len(purpose.split()) != 1 or purpose != purpose.strip():
        raise ValueError("purpose must be one purpose name")
    if not isinstance(subject_token, str) or not subject_token:
        raise TypeError("subject_token must be a non-empty str")
    if audience is not None and (not isinstance(audience, str) or not audience):
        raise TypeError("audience must be a non-empty str or None")
    if actor_token is not None and (not isinstance(actor_token, str) or not actor_token):
        raise TypeError("actor_token must be a non-empty str or None")
    encoded = None
    if details:
        if isinstance(details, str | bytes) or not all(isinstance(d, Mapping) for d in details):
            raise TypeError("authorization_details must be a sequence of mappings (RFC 9396 objects)")
        # Sorted keys: the same details in another key order are the same request (one cache entry).
        encoded = msgspec.json.encode([dict(d) for d in details], order="sorted").decode()
    form = {
        "grant_type": GRANT_TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": subject_token_type,
        "scope": purpose,
    }
    if audience is not None:
        form["audience"] = audience
    if encoded is not None:
        form["authorization_details"] = encoded
    if actor_token is not None:
        form["actor_token"] = actor_token
        form["actor_token_type"] = actor_token_type
    key = cache.key(
        [
            subject_token_type,
            subject_token,
            purpose,
            audience,
            encoded,
            actor_token_type if actor_token is not None else None,
            actor_token,
        ]
    )
    return Prepared(purpose=purpose, audience=audience, form=form, key=key)
