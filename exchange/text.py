"""Text that leaves for a terminal: a request-supplied string (a `sub`, a `client_id`, a scope) must
never reach one as a control sequence.

An attacker chooses those strings. Sent raw, ESC/CSI/OSC sequences (C0 `\\x1b[...`, or the one-byte C1
`\\x9b`) move the cursor, rewrite the screen, set the window title or the clipboard; bidi overrides
(U+202E) make a line read differently from its bytes. Python's `str.isprintable` is false for exactly
the classes to neutralise (controls Cc, formats Cf such as bidi and zero-width, separators Zl/Zp,
surrogates, unassigned and private-use code points, and spaces other than U+0020), so it is the test.
Printable text, the overwhelming case, passes through untouched.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """For tables and messages: each non-printable character as a Python escape (`\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP: a UTF-16 surrogate pair, as JSON spells it (RFC 8259 §7)
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_printable(encoded: str) -> str:
    """A JSON text with every non-printable character written as a `\\uXXXX` escape.

    The same JSON value (a decoder reads the same strings back), but safe to show on a terminal: a JSON
    encoder escapes only C0 controls, and leaves C1 controls, bidi overrides and U+2028 raw. Outside
    strings JSON is printable ASCII, so only string contents change.
    """
    if encoded.isprintable():
        return encoded
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in encoded)
