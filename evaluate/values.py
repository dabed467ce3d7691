"""Scalar comparison: the fast exact path (`quick`), then latex2sympy2_extended + sympy (`symbolic`, bounded by the
grade's sympy budget in CPU seconds), then text; and the proportionality test equations and relations share.

A plain decimal (`1.414`) against an exact value or another decimal follows the rounding rule (`rounding`);
REL_TOL is left for decimals inside expressions (`0.5\\pi`) and for values at variable test points.

Every step notes what decided in `Ctx.trace` when explaining (`grade.explain`); the notes are only built then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mathforge.evaluate import quick, rounding, symbolic

REL_TOL = 1e-4
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_DECIMAL_RE = re.compile(r"\d\.\d|\d\.(?!\d)|\.\d")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass
class Ctx:
    """One comparison's settings: percent signs on each side, the CPU seconds left for sympy, the explain trace."""

    percent_pred: bool
    percent_gold: bool
    sympy_budget: float
    trace: list[str] | None = field(default=None)

    def note(self, message: str) -> None:
        if self.trace is not None:
            self.trace.append(message)

    def run_sympy(self, fn, *args):
        """symbolic.run_bounded within what is left of the budget, which shrinks by the CPU time it used
        (all of it on GradeTimeout, which propagates)."""
        try:
            value, used = symbolic.run_bounded(fn, *args, timeout=self.sympy_budget)
        except symbolic.GradeTimeout:
            self.sympy_budget = 0.0
            raise
        self.sympy_budget = max(0.0, self.sympy_budget - used)
        return value


def proportional(a: str, b: str, sign: int = 0) -> bool | None:
    """Whether two expressions are proportional at the test points (ratio > 0 when sign=1, < 0 when -1)."""
    try:
        da, db = quick.parse(a), quick.parse(b)
        variables = da.variables | db.variables
        if not variables:
            return None
        ratios = []
        for point in quick.points(variables, integers=da.sums or db.sums):
            x, y = quick.evaluate(da, point), quick.evaluate(db, point)
            if x == 0 or y == 0:
                if x != y:
                    return False
                continue
            ratios.append(x / y)
    except (quick.Unsupported, quick.TooLarge, ZeroDivisionError, ValueError, OverflowError, TypeError):
        return None
    if len(ratios) < 2 or not all(quick.is_real(r) for r in ratios):
        return None
    tolerance = REL_TOL if (da.decimal or db.decimal) else 1e-9
    same = all(quick.close(r, ratios[0], tolerance) for r in ratios)
    return same and (sign == 0 or (ratios[0] > 0) == (sign > 0))


def scalar_equal(p: str, g: str, ctx: Ctx) -> bool:
    if squash(p) == squash(g):
        ctx.note(f"same text: {p!r}")
        return bool(p)
    times = _clock(p), _clock(g)
    if None not in times and times[0] == times[1]:
        ctx.note(f"clock times: both {times[0] // 3600:02d}:{times[0] // 60 % 60:02d}:{times[0] % 60:02d}")
        return True
    verdict = _quick_equal(p, g, ctx)
    if verdict is not None:
        return verdict
    if symbolic.screen(p) and symbolic.screen(g) and not (_WORD_RE.search(p) or _WORD_RE.search(g)):
        verdict = _symbolic_equal(p, g, ctx)
        if verdict is not None:
            return verdict
    verdict = _text_key(p) == _text_key(g) and bool(_text_key(p))
    ctx.note(f"text: {_text_key(p)!r} vs {_text_key(g)!r}: {'equal' if verdict else 'differ'}")
    return verdict


_CLOCK_RE = re.compile(
    r"(\d{1,2}):(\d\d)(?::(\d\d))?(?:\s*([AaPp])\.?(?:\s*[Mm]\.?)?)?"
)  # the M may be gone with the units


def _clock(text: str) -> int | None:
    """A time of day (20:34, 20:34:00, 08:34 P.M., 12:05 am) as seconds after midnight; None for anything else."""
    match = _CLOCK_RE.fullmatch(text.strip())
    if not match:
        return None
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    half = (match.group(4) or "").lower()
    if minute > 59 or second > 59 or hour > (12 if half else 23) or (half and hour == 0):
        return None
    if half:
        hour = hour % 12 + (12 if half == "p" else 0)
    return (hour * 60 + minute) * 60 + second


def _symbolic_equal(p: str, g: str, ctx: Ctx) -> bool | None:
    symbolic.load()  # a one-off import and parser set-up, not part of the budget
    if ctx.sympy_budget <= 0:
        ctx.note("sympy: no time left, cannot tell")
        return None
    verdict = _symbolic_rounded(p, g, ctx)
    if verdict is not None:
        return verdict
    rel = REL_TOL if _DECIMAL_RE.search(p + " " + g) else 1e-12
    try:
        verdict = ctx.run_sympy(symbolic.compare, p, g, rel)
    except symbolic.GradeTimeout:
        ctx.note("sympy: out of time, cannot tell")
        return None
    except symbolic.Unreadable as error:
        ctx.note(f"sympy: cannot read ({error})")
        return None
    ctx.note(f"sympy: {'cannot tell' if verdict is None else 'equal' if verdict else 'differ'}")
    return verdict


def _symbolic_rounded(p: str, g: str, ctx: Ctx) -> bool | None:
    """The rounding rule when one side is a plain decimal and sympy gives the other's exact value (`\\sinh 1`);
    None otherwise (and the sympy comparison decides)."""
    dp, dg = rounding.literal(p), rounding.literal(g)
    if (dp is None) == (dg is None):
        return None
    decimal, exact_text, decimal_percent = (dp, g, ctx.percent_pred) if dp is not None else (dg, p, ctx.percent_gold)
    if _DECIMAL_RE.search(exact_text):
        return None
    try:
        value = ctx.run_sympy(symbolic.value, exact_text)
    except (symbolic.GradeTimeout, symbolic.Unreadable):
        return None
    if value is None:
        return None
    exact_percent = ctx.percent_gold if dp is not None else ctx.percent_pred
    decimals = [decimal.over(d) for d in _divisors(decimal_percent, exact_text)]
    values = _with_percent(value, exact_percent, p if dp is not None else g)
    verdict = any(rounding.matches(x, y) for x in decimals for y in values)
    ctx.note(
        f"sympy: decimal within one unit of its last digit ({decimal.digits} significant digits): {_word(verdict)}"
    )
    return verdict


def _text_key(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = re.sub(r"^\(?([A-Ea-e])\)?$", r"\1", text.strip())
    return re.sub(r"[^a-z0-9.\-+/:]", "", text.lower())


def _quick_equal(p: str, g: str, ctx: Ctx) -> bool | None:
    """Verdict from the fast path, or None when it cannot read both sides."""
    try:
        qp, qg = quick.parse(p), quick.parse(g)
    except (quick.Unsupported, RecursionError):
        return None
    try:
        variables = qp.variables | qg.variables
        if variables:
            return _quick_points(qp, qg, variables, ctx)
        a, b = quick.evaluate(qp), quick.evaluate(qg)
    except quick.TooLarge:
        ctx.note("fast path: a value too large to compute: not equal")
        return False
    except (ZeroDivisionError, ValueError, OverflowError, TypeError, RecursionError):
        return None
    verdict = _rounded_equal((p, qp, a), (g, qg, b), ctx)
    if verdict is not None:
        return verdict
    if not (qp.decimal or qg.decimal):
        try:
            ea, eb = quick.exact(qp), quick.exact(qg)
        except (quick.Unsupported, ZeroDivisionError, ValueError, OverflowError, RecursionError):
            pass
        else:
            preds_exact = _with_percent(ea, ctx.percent_pred, g)
            golds_exact = _with_percent(eb, ctx.percent_gold, p)
            verdict = any(x == y for x in preds_exact for y in golds_exact)
            if ctx.trace is not None:
                ctx.note(f"fast path: exact rationals {_fraction(ea)} vs {_fraction(eb)}: {_word(verdict)}")
            return verdict
    rel = REL_TOL if (qp.decimal or qg.decimal) else 1e-30
    preds = _with_percent(a, ctx.percent_pred, g)
    golds = _with_percent(b, ctx.percent_gold, p)
    verdict = any(quick.close(x, y, rel) for x in preds for y in golds)
    if ctx.trace is not None:
        ctx.note(f"fast path: values {_short(a)} vs {_short(b)} within {rel:g}: {_word(verdict)}")
    return verdict


def _with_percent(value, percent: bool, other: str) -> list:
    """The values a side may mean: x% is x/100, and also x when the other side is a plain number ("50" for
    "what percent?"), not when it is an expression (4 4/9% is not 40/9)."""
    return [value if divisor == 1 else value / divisor for divisor in _divisors(percent, other)]


def _divisors(percent: bool, other: str) -> tuple[int, ...]:
    if not percent:
        return (1,)
    return (100, 1) if _PLAIN_NUMBER_RE.fullmatch(other.strip()) else (100,)


def _rounded_equal(pred: tuple, gold: tuple, ctx: Ctx) -> bool | None:
    """The rounding rule (`rounding`) when a side is a plain decimal (`1.414`) and the other one too or an exact
    value (`\\sqrt2`); None when neither side is a plain decimal or the other holds a decimal inside an
    expression (`0.5\\pi`: compared within REL_TOL)."""
    (p, qp, a), (g, qg, b) = pred, gold
    dp, dg = rounding.literal(p), rounding.literal(g)
    if dp is None and dg is None:
        return None
    preds = _read(dp, qp, a, ctx.percent_pred, g)
    golds = _read(dg, qg, b, ctx.percent_gold, p)
    if preds is None or golds is None:
        return None
    verdict = any(_rounds_to(x, y) for x in preds for y in golds)
    if ctx.trace is not None:
        shown = [(side, d) for side, d in (("pred", dp), ("gold", dg)) if d is not None]
        units = "; ".join(f"{side} {d.digits} significant digits, unit {_fraction(d.unit)}" for side, d in shown)
        ctx.note(f"fast path: decimal within one unit of its last digit ({units}): {_word(verdict)}")
    return verdict


def _read(decimal, parsed, value, percent: bool, other: str) -> list | None:
    """One side for the rounding rule: its Decimal(s), or its exact values (a Fraction, else the mpmath value
    of an irrational); None when it holds a decimal inside an expression."""
    if decimal is not None:
        return [decimal.over(divisor) for divisor in _divisors(percent, other)]
    if parsed.decimal:
        return None
    try:
        value = quick.exact(parsed)
    except (quick.Unsupported, ZeroDivisionError, ValueError, OverflowError, RecursionError):
        pass
    return _with_percent(value, percent, other)


def _rounds_to(x, y) -> bool:
    if isinstance(x, rounding.Decimal) and isinstance(y, rounding.Decimal):
        return rounding.decimals_match(x, y)
    if isinstance(x, rounding.Decimal):
        return rounding.matches(x, y)
    return rounding.matches(y, x)


def _quick_points(qp, qg, variables, ctx: Ctx) -> bool | None:
    agree = 0
    for point in quick.points(variables, integers=qp.sums or qg.sums):
        try:
            a, b = quick.evaluate(qp, point), quick.evaluate(qg, point)
        except quick.Unsupported:
            return None
        except (ZeroDivisionError, ValueError):
            continue
        if not quick.close(a, b, REL_TOL if (qp.decimal or qg.decimal) else 1e-12):
            if not (quick.is_real(a) and quick.is_real(b)):
                continue  # a negative base under a fractional power: branches, not a difference
            ctx.note(f"fast path: differ at {_point(point)}")
            return False
        agree += 1
    if agree >= 2:
        ctx.note(f"fast path: equal at {agree} test points")
        return True
    return None


def _word(verdict: bool) -> str:
    return "equal" if verdict else "differ"


def _fraction(value) -> str:
    """A rational for the trace: exact when short, else its first digits."""
    if max(value.numerator.bit_length(), value.denominator.bit_length()) < 200:
        return str(value)
    return "~" + _short(quick.mpf(value.numerator) / quick.mpf(value.denominator))


def _short(value) -> str:
    return quick._CTX.nstr(value, 12)


def _point(point: dict) -> str:
    return ", ".join(f"{k[2:]}={_short(v)}" for k, v in point.items())


def squash(text: str) -> str:
    """`text` without any whitespace."""
    return re.sub(r"\s+", "", text)
