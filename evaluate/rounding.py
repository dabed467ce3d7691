"""Decimals read as a careful grader reads them: a decimal literal stands for the values its shown digits allow.

A decimal written as `1.414` answers an exact value (integer, fraction, radical, π expression) when it is less
than one unit of its last shown digit away from it (here 0.001) and shows at least 4 significant digits:
`0.3333` is 1/3, `2.6667` is 8/3, `125.663` is 40π, `1.414` is √2; `3.14` is not π, `0.33` not 1/3 (too few digits: only an exact
match counts, so `0.5` is 1/2 and `0.25` is 1/4), `5.001` is not 5. Less than one unit, not half a unit, so a
truncated `1.414` counts as well as a rounded one.

Two decimals are equal when they are the same decimal (`0.50` is `0.5`), or when the less precise one, showing
at least 4 significant digits, is less than one unit of its own last digit from the more precise one: it reads
as a rounding of it (`3.142` and `3.14159`, either side gold). Two decimals with as many places are therefore
equal only when equal: `920.25` is not `920.26`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from mathforge.evaluate import quick

MIN_DIGITS = 4  # 3.14 is not π, 1.41 not √2, 0.667 not 2/3: a MATH gold asks for the exact value
_LITERAL_RE = re.compile(r"([-+]?)(?:(\d+)\.(\d*)|\.(\d+)|(\d+)(?=[eE]))(?:[eE]([-+]?\d+))?")


@dataclass(frozen=True)
class Decimal:
    """A decimal literal: its exact value, one unit of its last shown digit, its significant digits."""

    value: Fraction
    unit: Fraction
    digits: int

    def over(self, divisor: int) -> Decimal:
        """The same literal read divided by `divisor` (33.33% is 0.3333, to a unit of 0.0001)."""
        return Decimal(self.value / divisor, self.unit / divisor, self.digits)


def literal(text: str) -> Decimal | None:
    """The decimal written by `text` when it is one plain decimal (`-1.414`, `3.`, `.5`, `1.2e-3`), else None."""
    match = _LITERAL_RE.fullmatch(re.sub(r"\s+", "", text))
    if not match:
        return None
    sign, whole, places, bare_places, mantissa, exponent = match.groups()
    whole = whole or mantissa or ""
    places = places if places is not None else bare_places or ""
    shift = int(exponent or 0) - len(places)
    if abs(shift) > 400:
        return None
    shown = (whole + places).lstrip("0")
    unit = Fraction(10) ** shift
    value = int(whole + places or "0") * unit
    return Decimal(-value if sign == "-" else value, unit, len(shown))


def matches(decimal: Decimal, value) -> bool:
    """Whether `decimal` answers an exact `value` (a Fraction, or an mpmath number for irrationals)."""
    if isinstance(value, Fraction):
        if value == decimal.value:
            return True
        return decimal.digits >= MIN_DIGITS and abs(value - decimal.value) < decimal.unit
    if not quick.is_real(value) or quick._CTX.isnan(value) or quick._CTX.isinf(value):
        return False
    own = _mpf(decimal.value)
    if value == own:
        return True
    return decimal.digits >= MIN_DIGITS and abs(value - own) < _mpf(decimal.unit)


def decimals_match(a: Decimal, b: Decimal) -> bool:
    """Whether two decimals are equal: the same decimal, or the coarser one a rounding of the finer one."""
    if a.value == b.value:
        return True
    if a.unit == b.unit:
        return False
    coarse, fine = (a, b) if a.unit > b.unit else (b, a)
    return coarse.digits >= MIN_DIGITS and abs(coarse.value - fine.value) < coarse.unit


def _mpf(value: Fraction):
    return quick.mpf(value.numerator) / quick.mpf(value.denominator)
