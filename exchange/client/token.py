"""The purpose token an app receives, and what the library reads from it.

The app is the token's holder, not its audience: it reads its own token's payload without verifying
the signature (the downstream service verifies; the app needs no keys). What it reads serves only the
app itself: the granted authorization_details, `single_use` (never reuse such a token) and a sanity
check that the exchange answered the question asked (purpose, audience). A token whose payload cannot
be read is refused, never reused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import msgspec

from exchange.verify.compact import CompactError, split_compact

# Far above any purpose token the exchange mints; only stops an absurd answer from being parsed.
MAX_TOKEN_BYTES: Final = 65536


class TokenAnswer(msgspec.Struct):
    """RFC 6749 §5.1 / RFC 8693 §2.2.1 success body; unknown members are ignored (§5.1)."""

    access_token: str
    token_type: str
    issued_token_type: str | None = None
    expires_in: int | None = None
    scope: str | None = None


class _Payload(msgspec.Struct):
    # Lenient: only what the app uses. The verifier downstream is the strict reader.
    scope: str
    aud: str | list[str]
    exp: int | None = None
    jti: str | None = None
    single_use: bool = False
    authorization_details: list[dict[str, Any]] | None = None


TOKEN_ANSWER: Final = msgspec.json.Decoder(TokenAnswer)
_PAYLOAD: Final = msgspec.json.Decoder(_Payload)


@dataclass(frozen=True, slots=True, repr=False)
class PurposeToken:
    """A purpose token and what the app may know about it. `repr` never shows the token itself."""

    access_token: str
    purpose: str
    audience: str
    #: Epoch seconds by this app's clock, counted from before the request was sent (so never late).
    expires_at: float
    #: The authorization_details the exchange granted (re-encoded by it, read-only).
    authorization_details: tuple[Mapping[str, Any], ...]
    #: The downstream service accepts it once; the library never hands it out twice.
    single_use: bool
    jti: str | None
    token_type: str
    issued_token_type: str | None
    #: The id the exchange audited the grant under.
    request_id: str

    def expires_in(self, now: float | None = None) -> float:
        """Seconds left (negative once expired)."""
        return self.expires_at - (time.time() if now is None else now)

    @property
    def authorization(self) -> str:
        """The value of an `Authorization` header carrying this token (RFC 6750 §2.1)."""
        return f"Bearer {self.access_token}"

    def __repr__(self) -> str:
        return (
            f"PurposeToken(purpose={self.purpose!r}, audience={self.audience!r}, jti={self.jti!r}, "
            f"expires_at={self.expires_at:.0f}, single_use={self.single_use})"
        )


class UnreadableToken(ValueError):
    """The answer's token is not a JWT this library can read; the message names no token content."""


def read_token(
    answer: TokenAnswer, *, purpose: str, audience: str | None, sent_at: float, request_id: str
) -> PurposeToken:
    """Check the exchange answered what was asked and describe the token; UnreadableToken if not."""
    if answer.token_type.lower() != "bearer":
        raise UnreadableToken(f"token_type {answer.token_type!r} is not Bearer")
    try:
        payload = _PAYLOAD.decode(split_compact(answer.access_token, MAX_TOKEN_BYTES).payload)
    except (CompactError, msgspec.DecodeError):
        raise UnreadableToken("the access token is not a readable JWT") from None
    auds = [payload.aud] if isinstance(payload.aud, str) else payload.aud
    if payload.scope != purpose or len(auds) != 1 or (audience is not None and auds != [audience]):
        raise UnreadableToken("the token is not for the purpose and audience asked for")
    # expires_in is relative, so it is immune to clock skew between the app and the exchange; a
    # missing one falls back to the token's own exp.
    if answer.expires_in is not None:
        expires_at = sent_at + answer.expires_in
    elif payload.exp is not None:
        expires_at = float(payload.exp)
    else:
        raise UnreadableToken("the answer says nothing about when the token expires")
    return PurposeToken(
        access_token=answer.access_token,
        purpose=purpose,
        audience=auds[0],
        expires_at=expires_at,
        authorization_details=tuple(_frozen(d) for d in payload.authorization_details or ()),
        single_use=payload.single_use,
        jti=payload.jti,
        token_type=answer.token_type,
        issued_token_type=answer.issued_token_type,
        request_id=request_id,
    )


def _frozen(value: Any) -> Any:
    """Read-only copy: a reused token is shared between callers, so none may change what others see."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
