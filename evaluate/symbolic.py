"""The slow path: LaTeX → sympy with latex2sympy2_extended, compared numerically, bounded in time.

Bounded without signals: each comparison runs in a fresh daemon thread, so it works from any thread or
worker process. The bound is the CPU time that thread uses (its own clock, `time.pthread_getcpuclockid`),
not wall time, so a verdict does not depend on how busy the machine is; a wall-clock backstop
(WALL_FACTOR × the budget + WALL_SLACK_S) still ends a thread that waits instead of computing. The input
is first screened (length, exponent towers, huge factorials) so the abandoned-thread case is rare.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from mathforge.evaluate import quick

MAX_LENGTH = 300
_TOWER_RE = re.compile(r"\^\s*\{[^}]*\^|\^\s*\{?\s*\d{7,}|\d{6,}\s*!|!\s*!")


_NOT_MATH_RE = re.compile(r"(?<!\\sqrt)\[|:|\d_")  # lists in brackets, ratios, times, bases: not for sympy


class GradeTimeout(RuntimeError):
    """A comparison ran past its time budget."""


class Unreadable(ValueError):
    """latex2sympy2_extended could not parse the text (garbage or LaTeX it does not know)."""


WALL_FACTOR = 20  # wall-clock backstop: a thread that got 1/20 of a CPU for 20× its budget is given up on
WALL_SLACK_S = 2.0
POLL_S = 0.005  # how often the thread's CPU clock is read while it runs (join returns at once when it ends)


def _cpu_clock(thread: threading.Thread) -> int | None:
    """The CPU-time clock of `thread` (Unix), None where there is none or the thread has already ended."""
    try:
        return time.pthread_getcpuclockid(thread.ident)
    except (AttributeError, OSError, TypeError):
        return None


def _cpu_seconds(clock: int | None, started: float) -> float:
    """CPU seconds used by the thread whose clock this is; wall seconds since `started` when it has none."""
    if clock is not None:
        try:
            return time.clock_gettime(clock)
        except OSError:  # the thread ended between the join and this read
            pass
    return time.monotonic() - started


def run_bounded(fn: Callable[..., Any], *args: Any, timeout: float) -> tuple[Any, float]:
    """(fn(*args), CPU seconds it used), run in a daemon thread; GradeTimeout when the thread has used more than
    `timeout` CPU seconds, or WALL_FACTOR × timeout + WALL_SLACK_S of wall time has passed."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True, name="mathforge-grade")
    started = time.monotonic()
    thread.start()
    clock = _cpu_clock(thread)
    wall_end = started + timeout * WALL_FACTOR + WALL_SLACK_S
    used = 0.0
    while True:
        thread.join(POLL_S)
        used = _cpu_seconds(clock, started)
        if not thread.is_alive():
            break
        if used > timeout or time.monotonic() > wall_end:
            raise GradeTimeout(f"comparison used more than {timeout:.3g} s of CPU time")
    if "error" in box:
        raise box["error"]
    return box["value"], used


def screen(text: str) -> bool:
    """True when `text` is safe to hand to sympy (short, no exponent towers or huge factorials)."""
    return (
        len(text) <= MAX_LENGTH
        and re.search(r"[0-9a-zA-Z]", text) is not None
        and not _TOWER_RE.search(text)
        and not quick.SIDE_BY_SIDE.search(text)
        and not _NOT_MATH_RE.search(text)
    )


_LOADED: list[bool] = []


def load() -> None:
    """Imports sympy and the LaTeX parser and builds the parser once, in the caller's thread (a one-off cost,
    not a grading cost)."""
    if _LOADED:
        return
    from latex2sympy2_extended import latex2sympy

    latex2sympy("\\sqrt[3]{8} + \\sin(x)")
    _LOADED.append(True)


def to_sympy(text: str):
    """latex2sympy2_extended's parse of `text` (Unreadable when it cannot)."""
    from latex2sympy2_extended import latex2sympy

    try:
        return latex2sympy(text)
    except Exception as error:  # noqa: BLE001 - the parser raises many kinds on garbage: one kind here
        raise Unreadable(f"{type(error).__name__}: {str(error)[:80]}") from None


def _safe_tree(expr) -> bool:
    import sympy

    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow) and node.exp.is_number:
            try:
                if abs(float(node.exp)) > 10**6 or 0 < abs(float(node.exp)) < quick.MIN_EXPONENT:
                    return False
            except (TypeError, ValueError, OverflowError):
                return False
        if isinstance(node, sympy.factorial) and node.args[0].is_number:
            try:
                if abs(float(node.args[0])) > quick.MAX_FACTORIAL:
                    return False
            except (TypeError, ValueError, OverflowError):
                return False
    return True


def _numeric(expr, subs: dict | None = None):
    """An mpmath value of a sympy expression with no free symbols left (ValueError otherwise)."""
    value = expr.evalf(40, subs=subs) if subs else expr.evalf(40)
    if value.free_symbols:
        raise ValueError("not numeric")
    real, imag = (part.evalf(40) for part in value.as_real_imag())
    if not (real.is_number and imag.is_number):
        raise ValueError("not numeric")
    r, i = quick.mpf(str(real)), quick.mpf(str(imag))
    return r if i == 0 else quick._CTX.mpc(r, i)


def compare(a_text: str, b_text: str, rel: float) -> bool | None:
    """Whether two scalar LaTeX expressions are equal; None when sympy cannot tell."""
    import sympy

    a, b = to_sympy(a_text), to_sympy(b_text)
    if isinstance(a, str) or isinstance(b, str):
        return None
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        try:
            return bool(a == b) or bool(sympy.simplify(a) == sympy.simplify(b))
        except Exception:  # noqa: BLE001
            return None
    if not (_safe_tree(a) and _safe_tree(b)):
        return sympy.srepr(a) == sympy.srepr(b)
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if a.has(sympy.Sum, sympy.Product) or b.has(sympy.Sum, sympy.Product):
        return _compare_sums(a, b, symbols, rel)
    if not symbols:
        return quick.close(_numeric(a), _numeric(b), rel)
    names = {str(s): s for s in symbols}
    agree = 0
    for point in quick.points(set(names)):
        subs = {names[k]: sympy.Float(str(v), 40) for k, v in point.items()}
        try:
            va, vb = _numeric(a, subs), _numeric(b, subs)
        except (ValueError, TypeError, ZeroDivisionError):
            continue
        if not quick.close(va, vb, 1e-12):
            return False
        agree += 1
    return agree >= 2 or None


def value(text: str):
    """The exact value of a variable-free expression: a Fraction when rational, else its mpmath value; None when
    sympy cannot give one (free symbols, not a number, an unsafe tree)."""
    import sympy

    expr = to_sympy(text)
    if not isinstance(expr, sympy.Expr) or expr.free_symbols or not _safe_tree(expr):
        return None
    if expr.is_Rational:
        return Fraction(int(expr.p), int(expr.q))
    try:
        return _numeric(expr)
    except (ValueError, TypeError, ZeroDivisionError):
        return None


SUM_POINTS = (2, 3, 5, 7)


def _compare_sums(a, b, symbols, rel: float) -> bool | None:
    """Sums and products: compared at small positive integers for every free symbol (no general simplify).

    A symbolic sum such as `\\sum_{k=0}^{n-1} F_{n-k-1} F_k` is unrolled at n = 2, 3, 5, 7, which costs a few
    terms instead of sympy's summation algorithms; bounds past 10^4 terms are refused (None)."""
    import sympy

    agree = 0
    for k in SUM_POINTS:
        subs = {s: sympy.Integer(k + i) for i, s in enumerate(symbols)}
        try:
            va, vb = (_unrolled(x.subs(subs)) for x in (a, b))
            va, vb = _numeric(va), _numeric(vb)
        except (ValueError, TypeError, ZeroDivisionError, AttributeError):
            return None
        if not quick.close(va, vb, rel if not symbols else 1e-12):
            return False
        agree += 1
    return agree >= 2 or None


def _unrolled(expr):
    """expr with every Sum / Product of at most 10^4 terms replaced by its value."""
    import sympy

    def visit(node):
        if isinstance(node, (sympy.Sum, sympy.Product)):
            body = visit(node.function)
            for var, lo, hi in node.limits:
                if not (lo.is_Integer and hi.is_Integer) or hi - lo > 10**4:
                    raise ValueError("a sum with symbolic or huge bounds")
                terms = [body.subs(var, v) for v in range(int(lo), int(hi) + 1)]
                body = sympy.Add(*terms) if isinstance(node, sympy.Sum) else sympy.Mul(*terms)
            return body
        if node.args:
            return node.func(*[visit(arg) for arg in node.args])
        return node

    return visit(expr)
