"""Minting: purpose tokens (RFC 9068 JWT access tokens) and Txn-Tokens (draft-ietf-oauth-transaction-
tokens-10 §9), signed with the active key.

Downscoping is structural: the claims are built from the purpose, the client and the verified subject
only; nothing from the request or the subject token is copied wholesale (a Txn-Token's tctx and rctx
are what rules/txn.py validated, never the subject token, draft §13.4).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jws import JWSRegistry

from exchange.keys import ActiveKey, KeyRing
from exchange.verify.compact import b64url_encode
from schemas.claims import (
    PURPOSE_TOKEN_TYP,
    TXN_TOKEN_TYP,
    WORKLOAD_SEPARATOR,
    PurposeClaims,
    SubjectId,
    TxnClaims,
    txn_subject,
)

_encode_claims = msgspec.json.Encoder().encode
# RFC 7518 §3.4: ES256 is ECDSA over P-256 with SHA-256, the signature the 32-byte R then the 32-byte S.
_ES256_CURVE: Final = "secp256r1"
_ES256_SIZE: Final = 32
# Carried over from the subject token only when present and well-typed (RFC 9068 §2.2.1).
_AUTH_CLAIMS = ("acr", "amr", "auth_time")


class Minter:
    def __init__(self, keyring: KeyRing, issuer: str) -> None:
        self._keyring = keyring
        self._issuer = issuer
        # Per typ: the header segment and the signer of the active key, rebuilt only when the key changes.
        self._prepared: dict[str, tuple[ActiveKey, bytes, Callable[[bytes], bytes]]] = {}

    def _prepare(self, typ: str) -> tuple[ActiveKey, bytes, Callable[[bytes], bytes]]:
        active = self._keyring.active
        prepared = self._prepared.get(typ)
        if prepared is None or prepared[0] is not active:
            header = {"alg": active.alg, "typ": typ, "kid": active.kid}
            segment = b64url_encode(_encode_claims(header)) + b"."
            prepared = self._prepared[typ] = (active, segment, signer(active))
        return prepared

    def claims(
        self,
        *,
        subject: Mapping[str, Any],
        subject_issuer: str,
        audience: str,
        client_id: str,
        purpose: str,
        ttl: int,
        now: float,
        details: list[dict[str, Any]] | None = None,
        act: dict[str, Any] | None = None,
        single_use: bool = False,
    ) -> PurposeClaims:
        """The claims for one purpose token; lifetime is the ttl but never past the subject's exp."""
        iat = int(now)
        exp = min(iat + ttl, int(subject["exp"]))
        acr, amr, auth_time = (subject.get(name) for name in _AUTH_CLAIMS)
        return PurposeClaims(
            iss=self._issuer,
            sub=subject["sub"],
            aud=audience,
            exp=exp,
            iat=iat,
            jti=secrets.token_urlsafe(18),
            client_id=client_id,
            scope=purpose,
            acr=acr if isinstance(acr, str) else None,
            amr=[m for m in amr if isinstance(m, str)] if isinstance(amr, list) else None,
            auth_time=auth_time if isinstance(auth_time, int) and not isinstance(auth_time, bool) else None,
            authorization_details=details or None,
            act=act,
            single_use=True if single_use else None,
            sub_id=SubjectId(format="iss_sub", iss=subject_issuer, sub=subject["sub"]),
        )

    def txn_claims(
        self,
        *,
        trust_domain: str,
        namespace: str,
        sub: str,
        purpose: str,
        workload: str,
        ttl: int,
        now: float,
        not_after: int | None = None,
        tctx: dict[str, Any] | None = None,
        rctx: dict[str, Any] | None = None,
        replacing: TxnClaims | None = None,
    ) -> TxnClaims:
        """The claims of one Txn-Token (draft §11.3): a fresh `txn`, or for a replacement (§13.15) the
        replaced token's `txn`, `sub` and `aud` unchanged and its requesters kept, this one appended.
        The lifetime is the ttl, never past `not_after` (the subject's exp, or the replaced token's)."""
        iat = int(now)
        exp = iat + ttl if not_after is None else min(iat + ttl, not_after)
        if replacing is not None:
            txn, sub_id = replacing.txn, replacing.sub_id
            req_wl = replacing.req_wl + WORKLOAD_SEPARATOR + workload
        else:
            # RFC 8417 §2.2 `txn`; a UUID as in the draft's examples (§9.2.4).
            txn, req_wl = str(uuid.uuid4()), workload
            sub_id = SubjectId(format="iss_sub", iss=namespace, sub=sub)
        return TxnClaims(
            iss=self._issuer,
            iat=iat,
            aud=trust_domain,
            exp=exp,
            txn=txn,
            sub=txn_subject(sub_id.iss, sub_id.sub),
            scope=purpose,
            req_wl=req_wl,
            jti=secrets.token_urlsafe(18),
            sub_id=sub_id,
            tctx=tctx or None,
            rctx=rctx or None,
        )

    def sign(self, claims: PurposeClaims | TxnClaims) -> str:
        """Compact JWS of the claims, typed by their kind (at+jwt, txntoken+jwt: draft §9.1): the fixed
        header segment, the claims' JSON, the signature of the two (`signer`)."""
        _, header, sign = self._prepare(TXN_TOKEN_TYP if isinstance(claims, TxnClaims) else PURPOSE_TOKEN_TYP)
        signing_input = header + b64url_encode(_encode_claims(claims))
        return (signing_input + b"." + b64url_encode(sign(signing_input))).decode("ascii")


def signer(active: ActiveKey) -> Callable[[bytes], bytes]:
    """What signs a JWS signing input with the active key, built once per key: for ES256 and Ed25519
    pyca/cryptography's key object (and ECDSA parameters) directly, for RSA joserfc's algorithm object.

    An ES256 signature is DER from cryptography, re-encoded as the fixed-size R || S of RFC 7518 §3.4
    (what joserfc's ES256 does per call, less its per-call key lookup and parameter objects).
    """
    if active.alg == "ES256":
        key = active.key.get_op_key("sign")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _ES256_CURVE:
            raise ValueError(f"signing key {active.kid} is not a P-256 private key, as ES256 needs")
        ecdsa = ec.ECDSA(hashes.SHA256())

        def es256(data: bytes) -> bytes:
            r, s = decode_dss_signature(key.sign(data, ecdsa))
            return r.to_bytes(_ES256_SIZE, "big") + s.to_bytes(_ES256_SIZE, "big")

        return es256
    if active.alg in ("Ed25519", "EdDSA"):  # one key type, two names (schemas/algorithms.py)
        ed = active.key.get_op_key("sign")
        if not isinstance(ed, Ed25519PrivateKey):
            raise ValueError(f"signing key {active.kid} is not an Ed25519 private key")
        return ed.sign
    alg, key_object = JWSRegistry.algorithms[active.alg], active.key
    return lambda data: alg.sign(data, key_object)
