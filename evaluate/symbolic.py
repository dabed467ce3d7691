"""The slow path: LaTeX → sympy with latex2sympy2_extended, compared numerically, bounded in time.

Bounded without signals: each comparison runs in a fresh daemon thread joined with a timeout,
so it works from any thread or worker process; the input is first screened (length, exponent
towers, huge factorials) so the abandoned-thread case is rare.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from mathforge.evaluate import quick

MAX_LENGTH = 300
_TOWER_RE = re.compile(r"\^\s*\{[^}]*\^|\^\s*\{?\s*\d{7,}|\d{6,}\s*!|!\s*!")


class GradeTimeout(RuntimeError):
    """A comparison ran past its time budget."""


def run_bounded(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """fn(*args) in a daemon thread; GradeTimeout when it is not done after `timeout` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True, name="mathforge-grade")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise GradeTimeout(f"comparison took longer than {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def screen(text: str) -> bool:
    """True when `text` is safe to hand to sympy (short, no exponent towers or huge factorials)."""
    return len(text) <= MAX_LENGTH and not _TOWER_RE.search(text)


def to_sympy(text: str):
    """latex2sympy2_extended's parse of `text` (may raise anything on garbage)."""
    from latex2sympy2_extended import latex2sympy

    return latex2sympy(text)


def _safe_tree(expr) -> bool:
    import sympy

    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow) and node.exp.is_number:
            try:
                if abs(float(node.exp)) > 10**6:
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
