"""Signing keys: generate, encrypt at rest, rotate, publish. "The active key signs, all published verify."

Private keys live in the store as AES-GCM ciphertext under a key-encryption key (KEK) that never
touches the store. The KeyRing holds the decrypted active key and the prebuilt JWKS bytes in memory so
minting and `/.well-known/jwks.json` do no I/O; `refresh()` re-reads the store (other replicas, CLI).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

from exchange.errors import ConfigError
from exchange.store.base import Store
from exchange.verify.errors import VerificationError
from exchange.verify.jwks import JWKSError, parse_jwks
from schemas.base import MAX_LEEWAY, MAX_TOKEN_LIFETIME
from schemas.claims import PURPOSE_TOKEN_TYP
from schemas.config import SigningConfig, StoreConfig
from schemas.records import StoredKey

log = structlog.get_logger("exchange.keys")

SigningKey = ECKey | OKPKey | RSAKey
# A retiring key stays published this long after it stopped signing: the longest purpose-token
# lifetime plus room for clock skew, so no token it signed fails verification for want of its key.
PUBLISH_AFTER_RETIRE = MAX_TOKEN_LIFETIME + MAX_LEEWAY
_json = msgspec.json.Encoder()


def generate_key(alg: str) -> SigningKey:
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "Ed25519":
        return OKPKey.generate_key("Ed25519")
    if alg in {"RS256", "PS256"}:
        return RSAKey.generate_key(2048)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


class KeyEncryption:
    """AES-256-GCM under the KEK; the kid is bound as associated data so ciphertexts can't be swapped."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != 32:
            raise ValueError("the KEK must be 32 bytes")
        self._aead = AESGCM(kek)

    def __repr__(self) -> str:
        return "KeyEncryption(<redacted>)"

    def seal(self, kid: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, kid.encode())

    def open(self, kid: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], kid.encode())
        except InvalidTag:
            raise ConfigError(
                [f"signing key {kid}: cannot decrypt it with this KEK (wrong EXCHANGE_KEK?)"]
            ) from None


def decode_kek(value: str, source: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError([f"{source}: not base64url"]) from None
    if len(raw) != 32:
        raise ConfigError([f"{source}: must decode to 32 bytes, got {len(raw)}"])
    return raw


def read_private_file(path: Path, what: str) -> str:
    """The text of a secret file that only its owner may read; ConfigError (one sentence) otherwise.

    The mode is checked on the opened file (symlinks, e.g. mounted secrets, are followed), so the check
    and the read are about the same file. Any group or other permission bit is refused: a KEK readable by
    a group is a KEK shared with everyone in it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError([f"{what}: {path} does not exist"]) from None
    except OSError as exc:
        raise ConfigError([f"{what}: {path} cannot be read ({exc.strerror})"]) from None
    with os.fdopen(fd, "r") as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                [
                    f"{what}: {path} is accessible by group or others (mode {mode:04o}); "
                    f"allow its owner only: chmod 600 {path}"
                ]
            )
        return fh.read()


def load_kek(signing: SigningConfig, store: StoreConfig) -> KeyEncryption:
    """EXCHANGE_KEK, else signing.kek_file, else (embedded store only) a generated file beside it.

    A KEK file must be private to its owner (`read_private_file`); every command that loads the KEK
    comes through here, so none can use a file that others could read.
    """
    env = os.environ.get("EXCHANGE_KEK")
    if env:
        return KeyEncryption(decode_kek(env, "EXCHANGE_KEK"))
    if signing.kek_file:
        path = Path(signing.kek_file)
        what = "signing.kek_file"
        return KeyEncryption(decode_kek(read_private_file(path, what), f"{what} ({path})"))
    if not store.url.startswith("sqlite:///") or store.url == "sqlite:///:memory:":
        raise ConfigError(
            [
                "signing: set EXCHANGE_KEK (or signing.kek_file) for this store; "
                "a generated KEK file is only allowed beside an embedded SQLite file"
            ]
        )
    path = Path(store.url[len("sqlite:///") :]).with_suffix(".kek")
    what = "generated KEK file"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting together, one creates the file and both read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))
        log.warning(
            "kek_generated", path=str(path), hint="set EXCHANGE_KEK for anything but local development"
        )
    return KeyEncryption(decode_kek(read_private_file(path, what), f"{what} ({path})"))


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


class KeyRing:
    """The keys this replica signs with and publishes, rebuilt from the store on `refresh()`."""

    def __init__(self, store: Store, kek: KeyEncryption, algorithm: str) -> None:
        self._store = store
        self._kek = kek
        self._algorithm = algorithm
        self._active: ActiveKey | None = None
        self._jwks: bytes = b'{"keys":[]}'
        self._published: tuple[PublishedKey, ...] = ()

    @property
    def active(self) -> ActiveKey:
        if self._active is None:
            raise RuntimeError("no active signing key: KeyRing.refresh() has not run")
        return self._active

    @property
    def jwks_bytes(self) -> bytes:
        return self._jwks

    @property
    def published_kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self._published)

    @property
    def published(self) -> tuple[PublishedKey, ...]:
        return self._published

    async def create_key(self, *, now: float | None = None, activate: bool = True) -> str:
        """Generate, encrypt and store a key of the configured algorithm; returns its kid."""
        key = generate_key(self._algorithm)
        kid = key.thumbprint()
        private = _json.encode(key.as_dict(private=True))
        stored = StoredKey(
            kid=kid,
            alg=self._algorithm,
            state="retiring",
            created_at=now or time.time(),
            public_jwk=_json.encode(key.as_dict(private=False)).decode(),
            private_jwk=self._kek.seal(kid, private),
        )
        await self._store.insert_key(stored)
        if activate:
            await self._store.activate_key(kid, now or time.time())
        return kid

    async def ensure_active(self) -> None:
        """First start: make a key if the store has none active. Safe when replicas race."""
        keys = await self._store.list_keys()
        if not any(k.state == "active" for k in keys):
            kid = await self.create_key()
            log.info("key_created", kid=kid, alg=self._algorithm, reason="no active key")
        await self.refresh()

    async def rotate(self, *, now: float | None = None) -> str:
        now = now or time.time()
        kid = await self.create_key(now=now)
        await self._store.retire_keys(before=now - PUBLISH_AFTER_RETIRE)
        await self.refresh()
        return kid

    async def refresh(self) -> None:
        keys = await self._store.list_keys()
        active = [k for k in keys if k.state == "active"]
        if not active:
            raise RuntimeError("the store has no active signing key")
        current = active[0]
        if self._active is None or self._active.kid != current.kid:
            private = import_key(msgspec.json.decode(self._kek.open(current.kid, current.private_jwk)))
            if not isinstance(private, (ECKey, OKPKey, RSAKey)):
                raise ConfigError([f"signing key {current.kid}: unexpected key type"])
            self._active = ActiveKey(
                kid=current.kid,
                alg=current.alg,
                key=private,
                header={"alg": current.alg, "typ": PURPOSE_TOKEN_TYP, "kid": current.kid},
            )
        published = [k for k in keys if k.state in {"active", "retiring"}]
        jwks = []
        for k in published:
            entry = msgspec.json.decode(k.public_jwk)
            entry.update({"kid": k.kid, "alg": k.alg, "use": "sig"})
            jwks.append(entry)
        self._jwks = _json.encode({"keys": jwks})
        self._published = tuple(PublishedKey(k.kid, k.state, k.created_at) for k in published)


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
