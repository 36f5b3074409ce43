"""The one JWS verification core: every signature the exchange or a downstream service accepts is
checked here, for subject and actor tokens, client assertions and purpose tokens alike.

The pipeline (panva/jose's `compactVerify`, with MultiFernet's "which keys" kept apart from "how to
check"):

1. strict compact parse (`exchange.verify.compact`): size cap, three base64url segments, no JSON
   serialisation, no JWE;
2. header policy: one unambiguous JSON object without `crit`/`jwk`/`jku`/`x5u`/`x5c`/`b64`/`cty`/`zip`,
   `alg` in the caller's explicit allow-list, `typ` as the caller requires, `kid` required or optional;
3. the key, taken ONLY from the KeySource the caller bound to the identity it is checking (the issuer
   a subject token names, the client an assertion authenticates, the exchange a purpose token comes
   from). With a kid, that key; without one, when the policy allows it, each key of that source in
   turn (bounded by the source's key count, itself capped);
4. the signature, with the key fitted to the header's algorithm by joserfc's `check_key` (the key's
   type, curve and own `alg` must fit: an RSA public key never becomes an HMAC secret, an ES256 key
   never checks ES384), then checked by pyca/cryptography. One equivalence is deliberate: for an
   Ed25519 OKP key, "EdDSA" (RFC 8037) and "Ed25519" (RFC 9864) name the same signature, whichever of
   the two the header, the allow-list or the key's own `alg` says.

Fitting a key is done once per (key, algorithm): a `PreparedKey` holds the outcome (joserfc's
`check_key` passed, pyca/cryptography's public key object, its padding and hash objects, the curve's
signature length), so the per-token work is the bare signature call. `PreparedKey.fit(key, alg)` is the
one place that does it; a JWSVerifier remembers the PreparedKey of each key object its sources hand it
(bounded, by object identity: a refreshed key set brings new objects, which are fitted anew), and each
remembered header keeps the last one it was checked with, taken when the source hands the same object.

What comes back is the verified header and the payload bytes. Claims are the caller's: each token kind
has its own claims policy (`exchange.trust`, `exchange.clients`, `exchange.verify.verifier`), sharing
`exchange.verify.strictjson` for unambiguous decoding.

    core = JWSVerifier(algorithms=["ES256"], typ={"at+jwt"})
    verified = await core.verify(token, keys)        # may fetch (JWKSCache)
    header, payload, key = await core.check(token, keys)  # the same, a plain tuple
    verified = core.verify_sync(token, keys)         # may fetch, blocking: for sync frameworks
    header, payload, key = core.check_sync(token, keys)  # the same, a plain tuple: the hot path
    verified = core.verify_cached(token, keys)       # never does I/O
    claims = decode_object(verified.payload)

A JWSVerifier is built once (algorithm objects looked up once) and remembers the headers it has fully
checked, byte for byte: the steady state of one issuer key skips the header parse. The memo is per
instance, so a header is only ever skipped under the policy that checked it, and keyed by the exact
segment, so a header spelled any other way (another member order, whitespace, escapes, a repeated
member, a non-canonical base64url character) is parsed and checked in full. Failures are JWSError with
a stable `problem` code; callers map it to their own error (opaque to the client, precise in the log).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ec import ECDSA, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from joserfc.errors import JoseError
from joserfc.jwa import ESAlgorithm, RSAAlgorithm, RSAPSSAlgorithm
from joserfc.jwk import Key

# JWSAlgModel is public in joserfc.jws, though missing from its __all__.
from joserfc.jws import JWSAlgModel, JWSRegistry  # type: ignore[attr-defined]

from exchange.verify.compact import Compact, JWSError, Problem, decode_header, split_compact, split_parts
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import MAX_KID_LENGTH, KeySource, UnknownKid
from schemas.algorithms import ASYMMETRIC_ALGORITHMS, DEFAULT_ALGORITHMS

__all__ = [
    "Compact",
    "JWSError",
    "JWSVerifier",
    "PreparedKey",
    "VerifiedJWS",
    "algorithm_models",
    "der_signature",
]

DEFAULT_MAX_TOKEN_BYTES: Final = 8192
# RFC 9864 §2.2 deprecates the polymorphic "EdDSA" for the fully-specified "Ed25519": with an Ed25519
# key they are one algorithm, so issuers mid-migration (key published as one, header saying the other)
# keep verifying. Never wider: an Ed448 key under "EdDSA" gets no such treatment.
_ED25519_NAMES: Final = frozenset({"EdDSA", "Ed25519"})
# Distinct headers remembered per verifier: one per (alg, kid, typ) in practice, so a handful; the bound
# only stops a stream of junk headers from growing the memo.
_HEADER_MEMO_SIZE: Final = 64
# Fitted keys remembered per verifier: one per (key, algorithm) of its sources, which are capped at 32
# keys each; the bound keeps a rotating or refetched set from piling up old objects.
_KEY_MEMO_SIZE: Final = 64


class VerifiedJWS(NamedTuple):
    """A JWS whose signature verified under the caller's policy and key source."""

    header: Mapping[str, Any]
    payload: bytes
    key: Key


class _Header:
    """A header that passed the policy of one JWSVerifier, remembered by its exact segment.

    `prepared` is the last key this header's signature was checked with, fitted to its algorithm: the
    steady state (one kid, one key object) takes it with one identity comparison instead of a memo
    lookup. It is one attribute holding one PreparedKey (its key and its check together), so a thread
    reading it never sees one key's object with another key's check; `prepared.key is key` makes sure
    it is this call's key object, from this call's source (a kid shared by two sources is two keys).
    """

    __slots__ = ("alg", "ed25519_only", "kid", "members", "prepared")

    def __init__(
        self, members: Mapping[str, Any], alg: JWSAlgModel, kid: str | None, ed25519_only: bool = False
    ) -> None:
        self.members = members
        self.alg = alg
        self.kid = kid
        # The header's alg was admitted as the other name of Ed25519: only an Ed25519 key may check it.
        self.ed25519_only = ed25519_only
        self.prepared: PreparedKey | None = None


class PreparedKey:
    """A public key fitted to one algorithm, once: `verify(signing_input, signature)` is then the bare
    pyca/cryptography call.

    `PreparedKey.fit(key, alg)` runs joserfc's `check_key` (key type, curve, the key's own `alg`, its
    `use`/`key_ops`) and takes the key's cryptography object and the algorithm's padding and hash
    objects, as joserfc's own `verify` would per call. ES*: the r||s signature of exactly twice the
    curve's length becomes DER (`der_signature`: what joserfc does with cryptography's
    `encode_dss_signature`, byte for byte). An algorithm without a fast path here keeps joserfc's
    `verify` (already fitted).
    """

    __slots__ = ("algorithm", "key", "verify")

    def __init__(self, key: Key, algorithm: JWSAlgModel, verify: Callable[[bytes, bytes], bool]) -> None:
        self.key = key
        self.algorithm = algorithm
        self.verify = verify

    @classmethod
    def fit(cls, key: Key, algorithm: JWSAlgModel, *, ed25519: bool = False) -> PreparedKey:
        """Fit `key` to `algorithm`; raises JWSError("algorithm_key_mismatch") when it does not fit.

        `ed25519`: the header named Ed25519 by its other name ("EdDSA" for "Ed25519" or the reverse):
        only an Ed25519 key may check it, under either name.
        """
        try:
            algorithm = _fitted(algorithm, key, ed25519)
            public = key.get_op_key("verify")
        except (JoseError, ValueError, TypeError):
            raise JWSError(
                "algorithm_key_mismatch", f"key {key.kid!r} does not fit {algorithm.name}"
            ) from None
        return cls(key, algorithm, _signature_check(algorithm, key, public))


def _signature_check(algorithm: JWSAlgModel, key: Key, public: Any) -> Callable[[bytes, bytes], bool]:
    """The per-token signature call for a fitted key, built once."""
    if isinstance(algorithm, RSAAlgorithm | RSAPSSAlgorithm) and isinstance(public, RSAPublicKey):
        rsa_verify, pad, digest = public.verify, algorithm.padding, algorithm.hash_alg()

        def rsa(message: bytes, signature: bytes) -> bool:
            try:
                rsa_verify(signature, message, pad, digest)
            except InvalidSignature:
                return False
            return True

        return rsa
    if isinstance(algorithm, ESAlgorithm) and isinstance(public, EllipticCurvePublicKey):
        ec_verify, ecdsa = public.verify, ECDSA(algorithm.hash_alg())
        size = (key.curve_key_size + 7) // 8  # type: ignore[union-attr]  # an EC key: check_key said so
        whole = 2 * size

        def ec(message: bytes, signature: bytes) -> bool:
            if len(signature) != whole:
                return False
            try:
                ec_verify(der_signature(signature, size), message, ecdsa)
            except InvalidSignature:
                return False
            return True

        return ec
    if isinstance(public, Ed25519PublicKey | Ed448PublicKey) and key.key_type == "OKP":
        ed_verify = public.verify

        def eddsa(message: bytes, signature: bytes) -> bool:
            try:
                ed_verify(signature, message)
            except InvalidSignature:
                return False
            return True

        return eddsa

    def generic(message: bytes, signature: bytes) -> bool:
        return bool(algorithm.verify(message, signature, key))

    return generic


def _der_heads(size: int) -> tuple[tuple[tuple[bytes, bytes], ...], ...]:
    """For halves of `size` octets with no leading zero octet: the octets before r (SEQUENCE and
    INTEGER headers, a zero octet if r's high bit is set) and before s, by (r high bit, s high bit)."""

    def heads(r_high: int, s_high: int) -> tuple[bytes, bytes]:
        r_len, s_len = size + r_high, size + s_high
        return bytes((0x30, r_len + s_len + 4, 0x02, r_len)) + b"\0" * r_high, bytes(
            (0x02, s_len)
        ) + b"\0" * s_high

    return tuple(tuple(heads(r_high, s_high) for s_high in (0, 1)) for r_high in (0, 1))


# P-256 and P-384 (a SEQUENCE under 128 octets: one length octet); P-521 takes the general path.
_DER_HEADS: Final = {size: _der_heads(size) for size in (32, 48)}


def der_signature(signature: bytes, size: int) -> bytes:
    """The DER `SEQUENCE { INTEGER r, INTEGER s }` of a JWS ECDSA signature, r || s of `size` bytes
    each (RFC 7518 §3.4): byte for byte what cryptography's `encode_dss_signature(r, s)` returns
    (tests/verify/test_fast_paths.py proves it for every size and edge), at a third of its cost,
    since it skips the two int conversions and the ASN.1 writer.

    DER's INTEGER is the minimal two's complement: no leading zero octet unless the next one has its
    high bit set (then one is needed: r and s are positive), and zero is the single octet 00. The
    lengths fit one octet except for P-521's SEQUENCE (up to 138 octets: the 0x81 long form).
    OpenSSL parses what it is handed strictly and compares it with its own re-encoding, so a wrong
    encoding could only fail a good signature, never pass a bad one.
    """
    heads = _DER_HEADS.get(size)
    if heads is not None and signature[0] and signature[size]:
        # Neither half starts with a zero octet (255 signatures in 256): each is minimal as it is,
        # and only the two high bits choose the headers.
        r_head, s_head = heads[signature[0] >> 7][signature[size] >> 7]
        return r_head + signature[:size] + s_head + signature[size:]
    r = signature[:size].lstrip(b"\0") or b"\0"
    s = signature[size:].lstrip(b"\0") or b"\0"
    if r[0] & 0x80:
        r = b"\0" + r
    if s[0] & 0x80:
        s = b"\0" + s
    body = b"\x02%c%b\x02%c%b" % (len(r), r, len(s), s)
    length = len(body)
    return (b"\x30%c" % length if length < 0x80 else b"\x30\x81%c" % length) + body


def algorithm_models(names: Collection[str]) -> dict[str, JWSAlgModel]:
    """joserfc's algorithm objects for an explicit allow-list of asymmetric algorithms (built once).

    Looked up from the class-level table rather than via get_alg(), which re-checks the allow-list and
    warns about EdDSA on every call. ValueError for a symmetric, unknown or unimplemented name.
    """
    if isinstance(names, str):
        raise TypeError("algorithms is a collection of names, e.g. ['ES256']")
    unsupported = set(names) - ASYMMETRIC_ALGORITHMS
    if unsupported or not names:
        raise ValueError(
            f"unsupported algorithms {sorted(unsupported)}; choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
        )
    known = JWSRegistry.algorithms
    missing = [name for name in names if name not in known]
    # A joserfc older than RFC 9864 lacks "Ed25519": the default list then goes without it (EdDSA
    # covers the same keys); an explicit request for it is an error.
    if missing and names is not DEFAULT_ALGORITHMS:
        raise ValueError(f"this joserfc does not implement {missing}")
    return {name: known[name] for name in names if name in known}


class JWSVerifier:
    """Verifies compact JWS under one header policy, with keys from the source each call names.

    `algorithms`: the explicit allow-list. `typ`: the accepted `typ` values compared lower-cased, None
    in the collection meaning "absent is fine"; `typ=None` leaves `typ` to the caller (any or none).
    `require_kid`: refuse a header without a kid (otherwise every key of the source is tried).
    """

    __slots__ = ("_algorithms", "_headers", "_keys", "_max_bytes", "_require_kid", "_typ")

    def __init__(
        self,
        *,
        algorithms: Collection[str],
        typ: Collection[str | None] | None = None,
        require_kid: bool = True,
        max_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
    ) -> None:
        if max_bytes < 256:
            raise ValueError("max_bytes must be at least 256")
        self._algorithms = algorithm_models(algorithms)
        self._typ = None if typ is None else frozenset(t.lower() if isinstance(t, str) else None for t in typ)
        self._require_kid = require_kid
        self._max_bytes = max_bytes
        self._headers: dict[bytes, _Header] = {}
        self._keys: dict[tuple[int, str, bool], PreparedKey] = {}

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._algorithms)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def split(self, token: str | bytes) -> Compact:
        """Step 1 alone, for a caller that must read the (unverified) payload to choose the key source."""
        return split_compact(token, self._max_bytes)

    def header(self, segment: bytes) -> _Header:
        """Step 2: the checked header of a header segment (memoised per verifier)."""
        checked = self._headers.get(segment)
        if checked is None:
            checked = self._check_header(decode_header(segment))
            if len(self._headers) >= _HEADER_MEMO_SIZE:
                self._headers.clear()
            self._headers[segment] = checked
        return checked

    def _check_header(self, header: dict[str, Any]) -> _Header:
        name = header["alg"]  # decode_header guarantees a string
        alg = self._algorithms.get(name)
        ed25519_only = False
        if alg is None and name in _ED25519_NAMES and _ED25519_NAMES & self._algorithms.keys():
            alg, ed25519_only = _ed25519_model(), True
        if alg is None:
            raise JWSError("algorithm_not_allowed", f"algorithm {name!r} is not allowed")
        if self._typ is not None:
            typ = header.get("typ")
            if (
                not (typ is None or isinstance(typ, str))
                or (typ.lower() if isinstance(typ, str) else None) not in self._typ
            ):
                raise JWSError("wrong_type", f"typ {typ!r} is not accepted here")
        kid = header.get("kid")
        if kid is None:
            if self._require_kid:
                raise JWSError("missing_kid", "JWS header has no kid")
        elif not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise JWSError("missing_kid", "JWS header kid is not a short non-empty string")
        return _Header(header, alg, kid, ed25519_only)

    async def verify(self, token: str | bytes | Compact, keys: KeySource) -> VerifiedJWS:
        """Verify `token` with a key of `keys` (fetching when the source needs to). Raises JWSError."""
        return VerifiedJWS(*await self.check(token, keys))

    async def check(
        self, token: str | bytes | Compact, keys: KeySource
    ) -> tuple[Mapping[str, Any], bytes, Key]:
        """`verify` as a plain (header, payload, key) tuple, as `check_sync` is for `verify_sync`."""
        signing_input, segment, payload, signature = (
            token if isinstance(token, Compact) else split_parts(token, self._max_bytes)
        )
        header = self._headers.get(segment) or self.header(segment)
        kid = header.kid
        if kid is None:
            keyless = self._signed(signing_input, signature, header, _usable(await keys.get_keys()))
            return header.members, payload, keyless
        try:
            key = await keys.get_key(kid)
        except VerificationError as exc:
            raise JWSError(_unknown(exc), f"kid {kid!r}: {exc}") from None
        self._signed_by(signing_input, signature, header, key)
        return header.members, payload, key

    def verify_sync(self, token: str | bytes | Compact, keys: KeySource) -> VerifiedJWS:
        """`verify` for code without an event loop: the source may fetch, blocking. Raises JWSError."""
        return VerifiedJWS(*self.check_sync(token, keys))

    def check_sync(
        self, token: str | bytes | Compact, keys: KeySource
    ) -> tuple[Mapping[str, Any], bytes, Key]:
        """`verify_sync` as a plain (header, payload, key) tuple: the hot path of every downstream call
        (purpose and Txn-Tokens), one straight run of the same steps with nothing built per call."""
        signing_input, segment, payload, signature = (
            token if isinstance(token, Compact) else split_parts(token, self._max_bytes)
        )
        header = self._headers.get(segment) or self.header(segment)
        kid = header.kid
        if kid is None:
            keyless = self._signed(signing_input, signature, header, _usable(keys.get_keys_sync()))
            return header.members, payload, keyless
        try:
            key = keys.get_key_sync(kid)
        except VerificationError as exc:
            raise JWSError(_unknown(exc), f"kid {kid!r}: {exc}") from None
        self._signed_by(signing_input, signature, header, key)
        return header.members, payload, key

    def verify_cached(self, token: str | bytes | Compact, keys: KeySource) -> VerifiedJWS:
        """Verify with keys already cached by `keys`; never does I/O. Raises JWSError."""
        signing_input, segment, payload, signature = (
            token if isinstance(token, Compact) else split_parts(token, self._max_bytes)
        )
        header = self._headers.get(segment) or self.header(segment)
        if header.kid is None:
            key = self._signed(signing_input, signature, header, keys.cached_keys())
        else:
            found = keys.get_cached_key(header.kid)
            if found is None:
                raise JWSError("unknown_kid", f"kid {header.kid!r} is not among the cached keys")
            self._signed_by(signing_input, signature, header, key := found)
        return VerifiedJWS(header.members, payload, key)

    def prepared(self, header: _Header, key: Key) -> PreparedKey:
        """`key` fitted to `header`'s algorithm (remembered per key object). Raises JWSError."""
        slot = (id(key), header.alg.name, header.ed25519_only)
        prepared = self._keys.get(slot)
        # The entry holds its key, so while it lives no other object can have that id: `is` makes sure.
        if prepared is not None and prepared.key is key:
            return prepared
        prepared = PreparedKey.fit(key, header.alg, ed25519=header.ed25519_only)
        if len(self._keys) >= _KEY_MEMO_SIZE:
            self._keys.clear()
        self._keys[slot] = prepared
        return prepared

    def _signed_by(self, signing_input: bytes, signature: bytes, header: _Header, key: Key) -> None:
        """The one key the kid named: the header's last key when it is this object, else fitted."""
        prepared = header.prepared
        if prepared is None or prepared.key is not key:
            prepared = header.prepared = self.prepared(header, key)
        try:
            good = prepared.verify(signing_input, signature)
        except (JoseError, ValueError, TypeError):  # a signature the library cannot even read is bad
            good = False
        if not good:
            raise JWSError("bad_signature", "the signature does not verify")

    def _signed(self, signing_input: bytes, signature: bytes, header: _Header, keys: tuple[Key, ...]) -> Key:
        """No kid: each key of the source that fits the algorithm, in turn (bounded by the set's size)."""
        for key in keys:
            try:
                prepared = self.prepared(header, key)
            except JWSError:
                continue
            try:
                good = prepared.verify(signing_input, signature)
            except (JoseError, ValueError, TypeError):
                good = False
            if good:
                return key
        raise JWSError("bad_signature", "no key of the source verifies the signature")


def _ed25519_model() -> JWSAlgModel:
    # joserfc before RFC 9864 has only "EdDSA", which verifies Ed25519 keys the same way.
    known = JWSRegistry.algorithms
    return known["Ed25519"] if "Ed25519" in known else known["EdDSA"]


def _is_ed25519(key: Key) -> bool:
    return key.key_type == "OKP" and getattr(key, "curve_name", None) == "Ed25519"


def _fitted(alg: JWSAlgModel, key: Key, ed25519_only: bool) -> JWSAlgModel:
    """The algorithm object that checks `key` under a header naming `alg`; raises when the key does
    not fit.

    joserfc's `check_key` compares the key's own `alg` member by name, so an Ed25519 key published
    with alg "EdDSA" would refuse a header saying "Ed25519" (and the other way round): for an Ed25519
    key either name is checked as Ed25519 (use, key type and curve still checked).
    """
    if ed25519_only or (alg.name in _ED25519_NAMES and _is_ed25519(key)):
        if not _is_ed25519(key) or key.get("alg") not in (None, *_ED25519_NAMES):
            raise ValueError("not an Ed25519 key for an Ed25519 signature")
        key.check_use("sig")
        return _ed25519_model()
    alg.check_key(key)
    return alg


def _usable(candidates: tuple[Key, ...]) -> tuple[Key, ...]:
    if not candidates:  # a source is never empty unless its keys could not be fetched
        raise JWSError("jwks_unavailable", "the key source has no usable keys")
    return candidates


def _unknown(exc: VerificationError) -> Problem:
    """Why a key source had no key for the kid: its keys could not be fetched, or the kid is not among
    them (perhaps without looking again: the refetch cooldown)."""
    if exc.reason == "keys_unavailable":
        return "jwks_unavailable"
    if isinstance(exc, UnknownKid) and exc.refetch_suppressed:
        return "unknown_kid_refetch_suppressed"
    return "unknown_kid"
