"""The key-encryption key (KEK): what seals signing keys at rest, where it comes from, which one sealed what.

Private signing keys live in the store as AES-256-GCM ciphertext under a KEK that never touches the
store, with the kid bound as associated data so ciphertexts cannot be swapped between rows. Each
ciphertext is tagged with the id of the KEK that sealed it (an HMAC of a fixed label under the KEK:
it names the KEK without revealing anything about it), so during a KEK change (`exchange keys rewrap`)
a process holding both KEKs opens each key with the right one without trial, and one holding the wrong
KEK says so in one sentence instead of failing on the ciphertext.

The KEK in use seals; previous KEKs (EXCHANGE_KEK_PREVIOUS or signing.previous_kek_file) only open,
like MultiFernet's "first key encrypts, all keys decrypt".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange.errors import ConfigError
from schemas.config import SigningConfig, StoreConfig

log = structlog.get_logger("exchange.keys")

KEK_ENV = "EXCHANGE_KEK"
PREVIOUS_KEK_ENV = "EXCHANGE_KEK_PREVIOUS"
_ID_LABEL = b"purpose-exchange KEK id v1"


def kek_id(kek: bytes) -> str:
    """A stable public name for a KEK: 16 base64url characters of HMAC-SHA256(kek, label)."""
    digest = hmac.new(kek, _ID_LABEL, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


class KeyEncryption:
    """AES-256-GCM under the KEK (the kid as associated data); earlier KEKs still open what they sealed."""

    def __init__(self, kek: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(kek) != 32 or any(len(k) != 32 for k in previous):
            raise ValueError("the KEK must be 32 bytes")
        self.kek_id = kek_id(kek)
        self._aeads = {self.kek_id: AESGCM(kek)}
        for k in previous:
            self._aeads.setdefault(kek_id(k), AESGCM(k))

    def __repr__(self) -> str:
        return f"KeyEncryption(kek_id={self.kek_id!r}, <redacted>)"

    @property
    def kek_ids(self) -> tuple[str, ...]:
        """The KEK in use first, then the previous ones."""
        return tuple(self._aeads)

    def seal(self, kid: str, plaintext: bytes) -> bytes:
        """Ciphertext under the KEK in use (tag it with `self.kek_id`)."""
        nonce = os.urandom(12)
        return nonce + self._aeads[self.kek_id].encrypt(nonce, plaintext, kid.encode())

    def open(self, kid: str, sealed: bytes, sealed_by: str | None = None) -> bytes:
        """The plaintext of `sealed`; ConfigError (one sentence) when no KEK given here opens it.

        `sealed_by` is the stored KEK id; None (sealed before ids existed) tries each KEK.
        """
        if sealed_by is not None and sealed_by not in self._aeads:
            raise ConfigError(
                [
                    f"signing key {kid}: cannot decrypt it with this KEK (wrong EXCHANGE_KEK?): it is "
                    f"sealed under KEK {sealed_by}, and the KEK given is {', '.join(self._aeads)}"
                ]
            )
        candidates = [self._aeads[sealed_by]] if sealed_by is not None else list(self._aeads.values())
        for aead in candidates:
            try:
                return aead.decrypt(sealed[:12], sealed[12:], kid.encode())
            except InvalidTag:
                continue
        raise ConfigError([f"signing key {kid}: cannot decrypt it with this KEK (wrong EXCHANGE_KEK?)"])


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


def _previous(signing: SigningConfig) -> list[bytes]:
    env = os.environ.get(PREVIOUS_KEK_ENV)
    if env:
        return [decode_kek(env, PREVIOUS_KEK_ENV)]
    if signing.previous_kek_file:
        path = Path(signing.previous_kek_file)
        what = "signing.previous_kek_file"
        return [decode_kek(read_private_file(path, what), f"{what} ({path})")]
    return []


def load_kek(signing: SigningConfig, store: StoreConfig) -> KeyEncryption:
    """EXCHANGE_KEK, else signing.kek_file, else (embedded store only) a generated file beside it; plus
    the previous KEK, if one is given (EXCHANGE_KEK_PREVIOUS, else signing.previous_kek_file).

    A KEK file must be private to its owner (`read_private_file`); every command that loads the KEK
    comes through here, so none can use a file that others could read.
    """
    previous = _previous(signing)
    env = os.environ.get(KEK_ENV)
    if env:
        return KeyEncryption(decode_kek(env, KEK_ENV), previous)
    if signing.kek_file:
        path = Path(signing.kek_file)
        what = "signing.kek_file"
        return KeyEncryption(decode_kek(read_private_file(path, what), f"{what} ({path})"), previous)
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
    return KeyEncryption(decode_kek(read_private_file(path, what), f"{what} ({path})"), previous)
