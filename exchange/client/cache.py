"""When a purpose token may be handed out again instead of asking the exchange. The rules, and why:

- Only for the same request: subject token, subject token type, purpose, audience, authorization
  details and actor token all equal. A token grants exactly what was asked for one user; handing it
  to a different question would grant what the exchange never decided (another payment, another
  user, another service).
- Only until `margin` seconds before it expires: a token must still be valid when the downstream
  service checks it, after the network and whatever clock difference there is between the two.
- Never a `single_use` token: the downstream service accepts it once, so a second use is refused as a
  replay and the user sees a failure the app caused.
- Bounded (least recently used entries go first) so a stream of distinct users cannot grow memory.
- Keyed by a keyed hash, never by the raw subject token: the cache holds no identity token (and a
  dump of its keys cannot be matched against tokens without this process's random key). It holds the
  purpose tokens themselves, which is what it is for.

One cache belongs to one PurposeTokenClient (one client identity): it is never shared, so a token
issued to one client is never handed to another.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from exchange.client.token import PurposeToken

DEFAULT_MAX_ENTRIES: Final = 256
DEFAULT_MARGIN: Final = 10.0


class ReuseCache:
    """Thread-safe; every operation is a few dict steps under a lock (no I/O)."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float],
    ) -> None:
        if max_entries < 0 or margin < 0:
            raise ValueError("ReuseCache needs max_entries >= 0 and margin >= 0")
        self._max = max_entries
        self._margin = margin
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, PurposeToken] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, parts: Sequence[str | None]) -> bytes:
        """The entry name for one request's defining parts (absent parts count as absent)."""
        digest = hashlib.blake2b(key=self._secret, digest_size=32)
        for part in parts:
            # Length-prefixed, so no two different part lists can produce the same byte stream.
            data = b"\xff" if part is None else part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big") + data)
        return digest.digest()

    def _usable(self, token: PurposeToken) -> bool:
        return not token.single_use and self._clock() < token.expires_at - self._margin

    def get(self, key: bytes) -> PurposeToken | None:
        with self._lock:
            token = self._entries.get(key)
            if token is None:
                return None
            if not self._usable(token):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return token

    def put(self, key: bytes, token: PurposeToken) -> None:
        """Remember `token` if the rules allow it ever to be reused."""
        if self._max == 0 or not self._usable(token):
            return
        with self._lock:
            self._entries[key] = token
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every remembered token."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
