"""Grading: is a predicted answer equal to the gold one?

    grade(r"The area is $\\boxed{\\dfrac{1}{2}}$.", "0.5")             # True
    grade("50\\%", "0.5"), grade("(1,2]", "1 < x \\leq 2")           # True, True
    grade(pred, gold, mode="strict")   # MATH / MetaMath / Skywork-Math string check

Lenient mode, in order: clean both strings (`normalize.clean`); equal strings win; split into
structures (matrices, unions, intervals, tuples, sets, bare lists, equations, inequalities) and
compare part by part (order matters for tuples, intervals and matrices, not for sets and lists);
scalars are compared by value: a fast exact path (`quick`, mpmath at 40 digits; variables at
fixed test points) and latex2sympy2_extended + sympy for the rest (`symbolic`, time-bounded);
what neither can read is compared as text. Numbers agree within a relative 1e-4 when either side
was written with a decimal point, exactly otherwise;
a percent sign allows x and x/100. Rational values are compared exactly (`3^{1000}+1` is not
`3^{1000}`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mathforge.errors import ConfigError
from mathforge.evaluate import quick, symbolic
from mathforge.evaluate.extract import explicit_answer, extract_answer
from mathforge.evaluate.normalize import clean, strict_normalize

MODES = ("lenient", "strict")
REL_TOL = 1e-4
MAX_INPUT = 5000
_VAR = r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\s*\([a-zA-Z]\))?"
_ASSIGN_RE = re.compile(rf"^\s*{_VAR}\s*=(?!=)")
_IN_RE = re.compile(rf"^\s*{_VAR}\s*\\in\s*")
_MATRIX_RE = re.compile(r"^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
_REL_RE = re.compile(r"\\leq|\\geq|\\neq|<|>|=")
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")  # English words, not \macros


@dataclass(frozen=True)
class Ctx:
    percent_pred: bool
    percent_gold: bool
    timeout: float


def answer_of(pred: str) -> str | None:
    """The answer in a model response, or the response itself when it already is a short answer."""
    marked = explicit_answer(pred)
    if marked is not None:
        return marked
    if len(pred) <= 120 and "\n" not in pred and len(_WORD_RE.findall(pred)) <= 3:
        return pred.strip()
    return extract_answer(pred, "last_number")


def gold_of(gold: str) -> str | None:
    """The gold answer: GSM8K's `#### x`, a boxed solution's last box, or the string itself."""
    if "####" in gold or "\\boxed" in gold or "\\fbox" in gold:
        return explicit_answer(gold)
    return gold.strip() or None


def grade(pred: str | None, gold: str | None, mode: str = "lenient", timeout: float = 3.0) -> bool:
    """True when `pred` (a response or an answer) equals `gold`; never raises on garbage input.

    `mode="lenient"` (default) compares values; `mode="strict"` is the MATH/MetaMath/Skywork-Math
    normalised string check. `timeout` bounds the sympy fallback of one comparison (seconds).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown grading mode {mode!r}; allowed: {', '.join(MODES)}")
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        pred_answer, gold_answer = answer_of(pred[-MAX_INPUT:]), gold_of(gold[:MAX_INPUT])
        if pred_answer is None or gold_answer is None:
            return False
        if mode == "strict":
            return strict_equal(pred_answer, gold_answer)
        return lenient_equal(pred_answer, gold_answer, timeout)
    except Exception:  # noqa: BLE001 - garbage in, "not equal" out
        return False


def strict_equal(pred: str, gold: str) -> bool:
    """MetaMath/Skywork-Math: numbers compared as floats (GSM8K), otherwise normalised strings."""
    p, g = pred.replace(",", "").strip(), gold.replace(",", "").strip()
    try:
        return float(p) == float(g)
    except ValueError:
        pass
    try:
        return strict_normalize(pred) == strict_normalize(gold)
    except Exception:  # noqa: BLE001
        return pred == gold


def lenient_equal(pred: str, gold: str, timeout: float = 3.0) -> bool:
    """Lenient comparison of two extracted answers (see module docstring)."""
    cp, cg = clean(pred), clean(gold)
    if _squash(cp.text) == _squash(cg.text) and cp.text:
        return True
    ctx = Ctx(cp.percent, cg.percent, timeout)
    return _equal(_structure(cp.text), _structure(cg.text), ctx)


# --- structures ---------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def split_top(text: str, separators: tuple[str, ...] = (",",)) -> list[str]:
    """Splits at separators outside (), [], {} and \\{ \\}."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for sep in separators:
                if text.startswith(sep, i):
                    parts.append(text[start:i])
                    start = i + len(sep)
                    i = start - 1
                    break
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _structure(text: str):
    """A nested tuple describing the answer's shape; scalars stay strings."""
    text = text.strip()
    text = _IN_RE.sub("", text)
    matrix = _MATRIX_RE.match(text)
    if matrix:
        rows = [r for r in re.split(r"\\\\", matrix.group(2)) if r.strip()]
        return ("matrix", tuple(tuple(c.strip() for c in row.split("&")) for row in rows))
    union = split_top(text, ("\\cup",))
    if len(union) > 1:
        return ("union", tuple(_structure(p) for p in union))
    if text.startswith("\\{") and text.endswith("\\}") and _whole_latex_set(text):
        inner = text[2:-2].strip()
        return ("set", tuple(_structure(p) for p in split_top(inner) if p)) if inner else ("set", ())
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _bracketed(text):
        items = split_top(text[1:-1])
        if len(items) > 1:
            return ("bracket", text[0] + text[-1], tuple(_structure(p) for p in items))
    plus_minus = split_top(text, ("\\pm",))
    if len(plus_minus) == 2:
        a, b = plus_minus
        return ("list", (_structure(f"{a}+{b}" if a else b), _structure(f"{a}-{b}" if a else f"-{b}")))
    words = split_top(text, (" or ", " and ", "\\text{or}", "\\text{and}"))
    items = [p for part in words for p in split_top(part, (",", ";"))]
    if len(items) > 1 and all(items):
        return ("list", tuple(_structure(p) for p in items))
    relations = _REL_RE.findall(text)
    if relations and all(r in ("<", ">", "\\leq", "\\geq") for r in relations):
        interval = _inequality(text)
        if interval is not None:
            return interval
        return ("ineq", text)
    if relations == ["="]:
        lhs, rhs = (s.strip() for s in text.split("=", 1))
        if lhs and rhs:
            return ("eq", lhs, rhs)
    return text


def _whole_latex_set(text: str) -> bool:
    depth = 0
    i = 0
    while i < len(text):
        if text.startswith("\\{", i):
            depth += 1
            i += 2
            continue
        if text.startswith("\\}", i):
            depth -= 1
            if depth == 0 and i + 2 < len(text):
                return False
            i += 2
            continue
        i += 1
    return depth == 0


def _bracketed(text: str) -> bool:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and i < len(text) - 1:
                return False
    return depth == 0


def _inequality(text: str):
    """`x < 3`, `3 \\geq x`, `-1 < x \\leq 2` → ("bracket", brackets, (lo, hi)); None otherwise."""
    parts = re.split(r"(\\leq|\\geq|<|>)", text)
    terms, ops = [p.strip() for p in parts[0::2]], parts[1::2]
    if len(terms) == 2:
        var_first = re.fullmatch(_VAR, terms[0]) is not None
        var_last = re.fullmatch(_VAR, terms[1]) is not None
        if var_first == var_last:
            return None
        op = ops[0]
        if var_last:  # 3 > x  ->  x < 3
            op = {"<": ">", ">": "<", "\\leq": "\\geq", "\\geq": "\\leq"}[op]
        bound = terms[1] if var_first else terms[0]
        if op in ("<", "\\leq"):
            return ("bracket", "(" + (")" if op == "<" else "]"), ("-\\infty", bound))
        return ("bracket", ("(" if op == ">" else "[") + ")", (bound, "\\infty"))
    if len(terms) == 3 and re.fullmatch(_VAR, terms[1]):
        if all(o in ("<", "\\leq") for o in ops):
            lo, hi = terms[0], terms[2]
            return ("bracket", ("(" if ops[0] == "<" else "[") + (")" if ops[1] == "<" else "]"), (lo, hi))
        if all(o in (">", "\\geq") for o in ops):
            hi, lo = terms[0], terms[2]
            return ("bracket", ("(" if ops[1] == ">" else "[") + (")" if ops[0] == ">" else "]"), (lo, hi))
    return None


# --- comparison ---------------------------------------------------------------------------------


def _equal(p, g, ctx: Ctx) -> bool:
    if isinstance(g, tuple) and g[0] == "eq" and not (isinstance(p, tuple) and p[0] == "eq"):
        if re.fullmatch(_VAR, g[1]):
            return _equal(p, _structure(g[2]), ctx)
        return False
    if isinstance(p, tuple) and p[0] == "eq" and not (isinstance(g, tuple) and g[0] == "eq"):
        if re.fullmatch(_VAR, p[1]):
            return _equal(_structure(p[2]), g, ctx)
        return False
    if isinstance(p, str) and isinstance(g, str):
        return _scalar_equal(p, g, ctx)
    if isinstance(p, str) or isinstance(g, str):
        return False
    kind_p, kind_g = p[0], g[0]
    if kind_g == "eq" and kind_p == "eq":
        return _equation_equal(p, g, ctx)
    if kind_g == "matrix" and kind_p == "matrix":
        return len(p[1]) == len(g[1]) and all(
            len(rp) == len(rg) and all(_scalar_equal(a, b, ctx) for a, b in zip(rp, rg)) for rp, rg in zip(p[1], g[1])
        )
    if kind_g == "bracket" and kind_p == "bracket":
        return p[1] == g[1] and len(p[2]) == len(g[2]) and all(_equal(a, b, ctx) for a, b in zip(p[2], g[2]))
    unordered = {"set", "list", "union"}
    if kind_g in unordered and kind_p in unordered and (kind_g == kind_p or "list" in (kind_g, kind_p)):
        return _same_multiset(p[1], g[1], ctx)
    if kind_g == "ineq" and kind_p == "ineq":
        return _squash(p[1]) == _squash(g[1])
    return False


def _same_multiset(ps, gs, ctx: Ctx) -> bool:
    if len(ps) != len(gs):
        return False
    unused = list(range(len(gs)))
    for item in ps:
        for k in unused:
            if _equal(item, gs[k], ctx):
                unused.remove(k)
                break
        else:
            return False
    return True


def _equation_equal(p, g, ctx: Ctx) -> bool:
    if (
        re.fullmatch(_VAR, p[1].strip())
        and re.fullmatch(_VAR, g[1].strip())
        and not _mentions(p[2] + g[2], p[1] + g[1])
    ):
        return _scalar_equal(p[2], g[2], ctx)  # "z = 7" answers "x = 7": the value is what was asked
    try:  # same equation up to a non-zero factor: (lhs - rhs) proportional
        dp = quick.parse(f"({p[1]})-({p[2]})")
        dg = quick.parse(f"({g[1]})-({g[2]})")
        ratios = []
        for point in quick.points(dp.variables | dg.variables):
            a, b = quick.evaluate(dp, point), quick.evaluate(dg, point)
            if b == 0 or a == 0:
                if a != b:
                    return False
                continue
            ratios.append(a / b)
        return len(ratios) >= 2 and all(quick.close(r, ratios[0], 1e-9) for r in ratios)
    except (quick.Unsupported, quick.TooLarge, ZeroDivisionError, ValueError, OverflowError):
        return _squash(p[1]) == _squash(g[1]) and _scalar_equal(p[2], g[2], ctx)


def _mentions(text: str, names: str) -> bool:
    """True when a single-letter name in `names` occurs as a letter in `text` (y = 2x+3 vs x = ...)."""
    letters = set(re.findall(r"(?<!\\)\b[a-zA-Z]\b", names))
    return any(re.search(rf"(?<![a-zA-Z\\]){re.escape(c)}(?![a-zA-Z])", text) for c in letters)


def _strip_assign(text: str) -> str:
    return _ASSIGN_RE.sub("", text, count=1).strip() if _ASSIGN_RE.match(text) and text.count("=") == 1 else text


def _scalar_equal(p: str, g: str, ctx: Ctx) -> bool:
    p, g = _strip_assign(p), _strip_assign(g)
    if _squash(p) == _squash(g):
        return bool(p)
    verdict = _quick_equal(p, g, ctx)
    if verdict is not None:
        return verdict
    if symbolic.screen(p) and symbolic.screen(g) and not (_WORD_RE.search(p) or _WORD_RE.search(g)):
        rel = REL_TOL if re.search(r"\d\.\d|\d\.(?!\d)|\.\d", p + " " + g) else 1e-12
        try:
            verdict = symbolic.run_bounded(symbolic.compare, p, g, rel, timeout=ctx.timeout)
        except Exception:  # noqa: BLE001 - a parser or sympy failure means "cannot tell"
            verdict = None
        if verdict is not None:
            return verdict
    return _text_key(p) == _text_key(g) and bool(_text_key(p))


def _text_key(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = re.sub(r"^\(?([A-Ea-e])\)?$", r"\1", text.strip())
    return re.sub(r"[^a-z0-9.\-+/]", "", text.lower())


def _quick_equal(p: str, g: str, ctx: Ctx) -> bool | None:
    """Verdict from the fast path, or None when it cannot read both sides."""
    try:
        qp, qg = quick.parse(p), quick.parse(g)
    except quick.Unsupported:
        return None
    try:
        variables = qp.variables | qg.variables
        if variables:
            agree = 0
            for point in quick.points(variables):
                try:
                    a, b = quick.evaluate(qp, point), quick.evaluate(qg, point)
                except (ZeroDivisionError, ValueError):
                    continue
                if not quick.close(a, b, 1e-12):
                    return False
                agree += 1
            return True if agree >= 2 else None
        a, b = quick.evaluate(qp), quick.evaluate(qg)
    except quick.TooLarge:
        return False
    except (ZeroDivisionError, ValueError, OverflowError, quick.Unsupported):
        return None
    if not (qp.decimal or qg.decimal):
        try:
            ea, eb = quick.exact(qp), quick.exact(qg)
        except (quick.Unsupported, ZeroDivisionError, ValueError, OverflowError):
            pass
        else:
            preds_exact = [ea, ea / 100] if ctx.percent_pred else [ea]
            golds_exact = [eb, eb / 100] if ctx.percent_gold else [eb]
            return any(x == y for x in preds_exact for y in golds_exact)
    rel = REL_TOL if (qp.decimal or qg.decimal) else 1e-30
    preds = [a, a / 100] if ctx.percent_pred else [a]
    golds = [b, b / 100] if ctx.percent_gold else [b]
    return any(quick.close(x, y, rel) for x in preds for y in golds)
