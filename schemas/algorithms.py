"""The JWS algorithm lists, in one place: what the exchange signs with, and what any verifier of ours
may accept. Everything here is asymmetric: "none" and HS* are never among them, so a public key can
never be used as an HMAC secret whatever a token's header says.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

#: What the exchange signs purpose tokens with (`[signing] algorithm`). "EdDSA" is the same Ed25519 key
#: under the name PyJWT and authlib still require (RFC 8037's; RFC 9864 prefers "Ed25519").
SigningAlgorithm = Literal["ES256", "Ed25519", "EdDSA", "RS256", "PS256"]
#: Every algorithm a verifier of ours may be configured with (subject tokens, assertions, purpose tokens).
AsymmetricAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519", "EdDSA"
]

SIGNING_ALGORITHMS: Final[tuple[str, ...]] = get_args(SigningAlgorithm)
ASYMMETRIC_ALGORITHMS: Final[frozenset[str]] = frozenset(get_args(AsymmetricAlgorithm))
#: What a purpose-token verifier and the client-assertion check accept by default: every signing
#: algorithm, plus "EdDSA", the pre-RFC 9864 name of Ed25519 that some libraries still emit.
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = ("ES256", "Ed25519", "EdDSA", "RS256", "PS256")

assert set(SIGNING_ALGORITHMS) <= set(DEFAULT_ALGORITHMS) <= ASYMMETRIC_ALGORITHMS
