"""Hand-made JWS, as an attacker makes them: any header bytes, any payload bytes, any signature bytes.

joserfc and PyJWT rightly refuse to produce most of these, so the signing input is built here and
signed (or not) with pyca/cryptography directly. Also a loopback listener that records connections,
to prove a header URL (`jku`, `x5u`) is never fetched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: The order of P-256: an ECDSA r or s must lie in [1, N-1].
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()


def signing_input(header: Any, payload: Any) -> str:
    """`header` and `payload` are objects (JSON-encoded here) or raw bytes (used as they are)."""
    return f"{b64(encode(header))}.{b64(encode(payload))}"


def es256(private_key: ec.EllipticCurvePrivateKey, message: str) -> bytes:
    r, s = decode_dss_signature(private_key.sign(message.encode(), ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def rs256(private_key: rsa.RSAPrivateKey, message: str) -> bytes:
    return private_key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())


def sign(key: Any, header: Any, payload: Any) -> str:
    """A compact JWS over any header and payload, signed with a joserfc EC (ES256) or RSA (RS256) key."""
    message = signing_input(header, payload)
    private = key.private_key
    signature = (
        es256(private, message)
        if isinstance(private, ec.EllipticCurvePrivateKey)
        else rs256(private, message)
    )
    return f"{message}.{b64(signature)}"


def with_signature(header: Any, payload: Any, signature: bytes) -> str:
    return f"{signing_input(header, payload)}.{b64(signature)}"


def hs256(secret: bytes, header: Any, payload: Any) -> str:
    message = signing_input(header, payload)
    return f"{message}.{b64(hmac.new(secret, message.encode(), hashlib.sha256).digest())}"


def public_key_encodings(key: Any) -> dict[str, bytes]:
    """Every spelling of a public key an HMAC-confusion attack would try as the secret."""
    public = key.private_key.public_key()
    jwk = key.as_dict(private=False)
    spellings = {
        "pem_spki": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der_spki": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk_json": json.dumps(jwk).encode(),
        "jwk_compact": json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode(),
    }
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        spellings["pem_pkcs1"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        spellings["n_bytes"] = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        spellings["n_b64url"] = jwk["n"].encode()
    else:
        spellings["point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        spellings["x_b64url"] = jwk["x"].encode()
    return spellings


class Listener:
    """A TCP listener on loopback that counts the connections it is offered (and answers none)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/keys"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def der(rs: tuple[int, int]) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return encode_dss_signature(*rs)


def json_with(claims: dict[str, Any], extra: bytes) -> bytes:
    """The claims as JSON with raw members appended (to repeat a name, or spell a number json cannot)."""
    return encode(claims)[:-1] + extra + b"}"


def flip_unused_bits(token: str) -> str:
    """The same token with a set unused low bit in the last character of some segment (another spelling)."""
    segments = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, segment in enumerate(segments):
        if len(segment) % 4 in (2, 3):
            segments[i] = segment[:-1] + alphabet[alphabet.index(segment[-1]) | 1]
            return ".".join(segments)
    raise ValueError("no segment has unused bits")
