"""Signing keys: generate, encrypt at rest, publish, and follow the lifecycle. "The current key signs,
all published keys verify."

The KeyRing holds the decrypted current key and the prebuilt JWKS bytes in memory so minting and
`/.well-known/jwks.json` do no I/O; `refresh()` re-reads the store (other replicas, the CLI). Every
change to the keys goes through `Store.change_keys` with a plan from `exchange.lifecycle` (pure
functions of the stored keys and `now`), so replicas and CLI runs racing each other serialise on the
store's key lock. A replica that cannot use the current key (its KEK does not open it) publishes the
keys all the same but refuses to mint (503), and says why in /readyz: it never signs with another key.
The KEK itself (`KeyEncryption`, `load_kek`) lives in `exchange.kek`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

from exchange import lifecycle
from exchange.errors import ConfigError, TemporarilyUnavailable
from exchange.kek import KeyEncryption, decode_kek, load_kek, read_private_file
from exchange.lifecycle import Timing
from exchange.store.base import AddKey, KeyChange, MoveKey, RewrapKey, Store
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSError, parse_jwks
from schemas.claims import PURPOSE_TOKEN_TYP
from schemas.records import StoredKey

__all__ = [
    "ActiveKey",
    "KeyEncryption",
    "KeyRing",
    "PublishedKey",
    "PublishedKeys",
    "decode_kek",
    "generate_key",
    "load_kek",
    "read_private_file",
]

log = structlog.get_logger("exchange.keys")

SigningKey = ECKey | OKPKey | RSAKey
# How often each replica runs the lifecycle step (under the store's key lock, so only one acts).
LIFECYCLE_SECONDS = 10.0
_json = msgspec.json.Encoder()


def generate_key(alg: str) -> SigningKey:
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg in {"Ed25519", "EdDSA"}:
        return OKPKey.generate_key("Ed25519")
    if alg in {"RS256", "PS256"}:
        return RSAKey.generate_key(2048)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def key_algorithms(key: SigningKey) -> tuple[str, ...]:
    """The signing algorithms (schemas/algorithms.py) a key of this type and size may be used with."""
    if isinstance(key, ECKey):
        return ("ES256",) if key.curve_name == "P-256" else ()
    if isinstance(key, OKPKey):
        return ("Ed25519", "EdDSA") if key.curve_name == "Ed25519" else ()
    size = key.private_key.key_size if key.private_key is not None else 0
    exponent = key.public_key.public_numbers().e
    return ("RS256", "PS256") if 2048 <= size <= 8192 and exponent == 65537 else ()


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """What may be said about a published key without its key material (metrics, health)."""

    kid: str
    state: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ActiveKey:
    kid: str
    alg: str
    key: SigningKey
    header: dict[str, Any]


def jwks_of(keys: Sequence[StoredKey]) -> bytes:
    """The JWKS document of the published keys (next, current, previous; never a retired one)."""
    entries = []
    for k in lifecycle.published(keys):
        entry = msgspec.json.decode(k.public_jwk)
        entry.update({"kid": k.kid, "alg": k.alg, "use": "sig"})
        entries.append(entry)
    return _json.encode({"keys": entries})


def load_pem(path: Path, algorithm: str) -> SigningKey:
    """An operator's private key from a PEM file private to its owner, fit for `algorithm` (its type
    and size among schemas/algorithms.py's signing algorithms); ConfigError (one sentence) otherwise."""
    text = read_private_file(path, "--pem")
    try:
        loaded = serialization.load_pem_private_key(text.encode(), password=None)
    except TypeError:
        raise ConfigError([f"--pem: {path} is encrypted; decrypt it to a 0600 file first"]) from None
    except ValueError:
        raise ConfigError([f"--pem: {path} is not a PEM private key"]) from None
    pem = loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key: SigningKey
    if isinstance(loaded, ec.EllipticCurvePrivateKey):
        key = ECKey.import_key(pem)
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        key = OKPKey.import_key(pem)
    elif isinstance(loaded, rsa.RSAPrivateKey):
        key = RSAKey.import_key(pem)
    else:
        raise ConfigError([f"--pem: {path} holds a {type(loaded).__name__}, which no signing algorithm uses"])
    fits = key_algorithms(key)
    if algorithm not in fits:
        usable = ", ".join(fits) or "no signing algorithm of ours"
        raise ConfigError([f"--pem: the key in {path} is for {usable}, but signing.algorithm is {algorithm}"])
    return key


def describe(change: KeyChange) -> dict[str, Any]:
    """A change as the fields of its `key_rotated` log line (kid and states; never key material)."""
    if isinstance(change, AddKey):
        return {"change": "created", "kid": change.key.kid, "alg": change.key.alg, "state": change.key.state}
    if isinstance(change, MoveKey):
        verb = {"current": "activated", "previous": "deactivated", "retired": "retired"}[change.to_state]
        return {"change": "revoked" if change.revoked else verb, "kid": change.kid, "state": change.to_state}
    return {"change": "rewrapped", "kid": change.kid, "kek_id": change.kek_id}


class KeyRing:
    """The keys this replica signs with and publishes, rebuilt from the store on `refresh()`."""

    def __init__(
        self, store: Store, kek: KeyEncryption, algorithm: str, *, timing: Timing | None = None
    ) -> None:
        self._store = store
        self._kek = kek
        self._algorithm = algorithm
        self.timing = timing or Timing()
        self._active: ActiveKey | None = None
        self._unusable: str | None = "no signing key loaded yet"
        self._jwks: bytes = b'{"keys":[]}'
        self._published: tuple[PublishedKey, ...] = ()

    @property
    def active(self) -> ActiveKey:
        """The current key; TemporarilyUnavailable (503) when this replica has none it can use."""
        if self._active is None:
            raise TemporarilyUnavailable("no usable signing key")
        return self._active

    @property
    def problem(self) -> str | None:
        """Why this replica cannot sign (for /readyz), or None."""
        return None if self._active is not None else self._unusable

    @property
    def jwks_bytes(self) -> bytes:
        return self._jwks

    @property
    def published_kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self._published)

    @property
    def published(self) -> tuple[PublishedKey, ...]:
        return self._published

    # -- making keys ----------------------------------------------------------------------------------

    def new_key(self, now: float, algorithm: str | None = None) -> StoredKey:
        """A fresh key of the configured (or given) algorithm, sealed under the KEK; not stored yet."""
        alg = algorithm or self._algorithm
        return self.seal(generate_key(alg), alg, now)

    def seal(self, key: SigningKey, alg: str, now: float) -> StoredKey:
        kid = key.thumbprint()
        return StoredKey(
            kid=kid,
            alg=alg,
            state="next",
            created_at=now,
            public_jwk=_json.encode(key.as_dict(private=False)).decode(),
            private_jwk=self._kek.seal(kid, _json.encode(key.as_dict(private=True))),
            kek_id=self._kek.kek_id,
        )

    @property
    def kek_id(self) -> str:
        """The id of the KEK new keys are sealed under."""
        return self._kek.kek_id

    def reseal(self, key: StoredKey) -> bytes:
        """The private half of `key`, opened with whichever KEK sealed it, sealed under the KEK in use."""
        if key.private_jwk is None:
            raise ValueError(f"signing key {key.kid} has no private half")
        return self._kek.seal(key.kid, self._kek.open(key.kid, key.private_jwk, key.kek_id))

    def _open(self, key: StoredKey) -> SigningKey:
        if key.private_jwk is None:
            raise ConfigError([f"signing key {key.kid} is retired: its private half is destroyed"])
        private = import_key(msgspec.json.decode(self._kek.open(key.kid, key.private_jwk, key.kek_id)))
        if not isinstance(private, (ECKey, OKPKey, RSAKey)):
            raise ConfigError([f"signing key {key.kid}: unexpected key type"])
        return private

    def prove(self, keys: Sequence[StoredKey]) -> None:
        """ConfigError (one sentence) unless this KEK opens the current key (or, with none current,
        every key that still has a private half): what every key-writing command checks first."""
        current = lifecycle.current_of(keys)
        for key in [current] if current is not None else [k for k in keys if k.private_jwk is not None]:
            try:
                self._open(key)
            except ConfigError:
                raise ConfigError(
                    [
                        f"the KEK given cannot decrypt signing key {key.kid} ({key.state}); nothing was "
                        "changed (give the service's KEK as EXCHANGE_KEK or signing.kek_file, and "
                        "during a KEK change the old one as EXCHANGE_KEK_PREVIOUS)"
                    ]
                ) from None

    # -- changing keys --------------------------------------------------------------------------------

    async def change(
        self,
        plan: Callable[[list[StoredKey]], Sequence[KeyChange]],
        *,
        prove: bool = True,
        kek_lost: bool = False,
    ) -> list[KeyChange]:
        """Apply `plan` under the store's key lock, after proving the KEK (`prove`; else only when the
        plan writes key material; never with `kek_lost`, the one plan that revokes what it cannot
        open); log each change as `key_rotated`, then refresh."""

        def guarded(keys: list[StoredKey]) -> Sequence[KeyChange]:
            if kek_lost:
                return plan(keys)
            if prove:
                self.prove(keys)
            changes = plan(keys)
            if not prove and any(isinstance(c, (AddKey, RewrapKey)) for c in changes):
                self.prove(keys)  # a replica whose KEK is wrong must not add keys nobody else can open
            return changes

        applied = await self._store.change_keys(guarded)
        for change in applied:
            log.info("key_rotated", **describe(change))
        if applied:
            await self.refresh()
        return applied

    async def advance(self, now: float | None = None) -> list[KeyChange]:
        """One lifecycle step at `now` (see `exchange.lifecycle.advance`); a new key is made only when
        the step needs one."""
        at = time.time() if now is None else now
        algorithm, timing = self._algorithm, self.timing
        step = lifecycle.advance(
            await self._store.list_keys(), at, timing, algorithm=algorithm, candidate=None
        )
        if not step.changes and not step.wants_key:
            return []  # the usual tick: nothing due, no lock taken
        chosen = self.new_key(at) if step.wants_key else None

        def plan(keys: list[StoredKey]) -> Sequence[KeyChange]:
            return lifecycle.advance(keys, at, timing, algorithm=algorithm, candidate=chosen).changes

        return await self.change(plan, prove=False)

    async def ensure_active(self, now: float | None = None) -> None:
        """Start-up: run one lifecycle step (a first start makes the first key), then load the keys.
        ConfigError (one sentence) when the current key cannot be used with this KEK."""
        await self.advance(now)
        await self.refresh()
        if self._active is None:
            raise ConfigError([self._unusable or "no usable signing key"])

    async def maintain(
        self, clock: Callable[[], float] = time.time, every: float = LIFECYCLE_SECONDS
    ) -> None:
        """Run the lifecycle step every `every` seconds until cancelled; survives store outages."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.advance(clock())
            except Exception as exc:  # the store may be down; the next step catches up
                log.warning("key_lifecycle_failed", error=f"{type(exc).__name__}: {exc}")

    # -- reading keys ---------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read the store: publish every key that is not retired; sign with the current one if this
        replica can open it, else with none (fail closed, the reason in `problem`)."""
        keys = await self._store.list_keys()
        published = lifecycle.published(keys)
        self._jwks = jwks_of(keys)
        self._published = tuple(PublishedKey(k.kid, k.state, k.created_at) for k in published)
        current = lifecycle.current_of(keys)
        if current is None:
            self._active, self._unusable = None, "the store has no current signing key"
            log.error("signing_key_unusable", reason=self._unusable)
            return
        if self._active is not None and self._active.kid == current.kid and self._active.alg == current.alg:
            return
        try:
            private = self._open(current)
        except ConfigError as exc:
            self._active, self._unusable = None, exc.problems[0]
            log.error("signing_key_unusable", kid=current.kid, reason=self._unusable)
            return
        self._active = ActiveKey(
            kid=current.kid,
            alg=current.alg,
            key=private,
            header={"alg": current.alg, "typ": PURPOSE_TOKEN_TYP, "kid": current.kid},
        )
        self._unusable = None


class PublishedKeys:
    """The KeySource of the exchange's own published keys (what /.well-known/jwks.json serves), for
    tokens the exchange checks that it signed itself: a Txn-Token presented for replacement. Follows
    rotations: the set is re-read whenever the key ring's published JWKS changes."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._seen: bytes | None = None
        self._keys: dict[str, Key] = {}

    def _current(self) -> dict[str, Key]:
        published = self._keyring.jwks_bytes
        if published is not self._seen:
            try:
                self._keys = parse_jwks(published)
            except JWKSError:  # nothing published yet: nothing verifies
                self._keys = {}
            self._seen = published
        return self._keys

    async def get_key(self, kid: str) -> Key:
        return self.get_key_sync(kid)

    def get_key_sync(self, kid: str) -> Key:
        key = self._current().get(kid)
        if key is None:
            raise VerificationError("unknown_key", f"kid {kid!r} is not one of our published keys")
        return key

    def get_cached_key(self, kid: str) -> Key | None:
        return self._current().get(kid)

    async def get_keys(self) -> tuple[Key, ...]:
        return self.get_keys_sync()

    def get_keys_sync(self) -> tuple[Key, ...]:
        return tuple(self._current().values())

    def cached_keys(self) -> tuple[Key, ...]:
        return tuple(self._current().values())
