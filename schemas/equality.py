"""Strict claim equality, the one comparison rules, details and the verifier's `require_detail` use.

Python's `==` coerces: `True == 1`, `1 == 1.0`. A token's `true` must never satisfy `amount = 1`, nor
`"10"` equal `10`. Numbers of any kind compare by value (JSON gives int or float; services often
hold Decimal), so 10.5, 10.50 and Decimal("10.5") agree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

_NUMBER: Final = (int, float, Decimal)


def same(a: Any, b: Any) -> bool:
    """Equality without Python's coercions: True is not 1, "1" is not 1; 1, 1.0 and Decimal(1) agree."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, _NUMBER) and isinstance(b, _NUMBER):
        if isinstance(a, Decimal) or isinstance(b, Decimal):
            # Decimal(str(float)) is the float's shortest repr: Decimal("10.5"), not its binary value.
            return Decimal(str(a)) == Decimal(str(b))
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)
