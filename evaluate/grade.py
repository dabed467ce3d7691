"""Grading: is a predicted answer equal to the gold one?

    grade(r"The area is $\\boxed{\\dfrac{1}{2}}$.", "0.5")             # True
    grade("50\\%", "0.5"), grade("(1,2]", "1 < x \\leq 2")           # True, True
    grade(pred, gold, mode="strict")   # MATH / MetaMath / Skywork-Math string check

    gold = parse_answer(item.gold, source="gold")                    # once per problem
    grade_parsed(parse_answer(response, source="response"), gold)    # per sample

Both sides are parsed once into an `answer.Answer` (extracted by position, cleaned by
`normalize.clean`, split into a typed structure), then compared structure against structure:
- sets and bare lists ignore order, tuples, intervals and matrices do not (a bare list may answer a
  tuple in order); a union matches a union; ± inside a set gives both values;
- an equation answers a value when one side names the quantity (`x = 5`, `(p, q) = (3, 2)`,
  `\\angle APC = 74^\\circ`, `2 = x`) or, in a response, when its left side is a computation (`2+3 = 5`);
  two equations agree when their named sides give the same value, else when lhs - rhs are proportional;
- inequalities and intervals are the same relation when (lhs - rhs) are positively proportional with the
  same operators or negatively with flipped ones (`-x > -1` is `x < 1` is `(-\\infty, 1)`);
- scalars by value: a fast exact path (`quick`, mpmath at 40 digits; variables at fixed test points),
  then latex2sympy2_extended + sympy (`symbolic`, time-bounded, sums and products at small integer
  points), then as text. Numbers agree within a relative 1e-4 when either side was written with a
  decimal point, exactly otherwise; x% is x/100, and also x when the
  other side is a plain number ("50" answering "what percent?").

Never raises on strings and never hangs: the sympy step runs under a per-grade deadline (`timeout`), and an
unexpected failure is counted (`grader_errors()`, shown in the eval report) and graded "not equal" —
or raised with `raise_on_error=True`. `explain(pred, gold)` returns the extracted strings, the parsed
structures and the rules that decided (`mathforge grade --explain`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field

from mathforge.errors import ConfigError
from mathforge.evaluate import quick, symbolic
from mathforge.evaluate.answer import Answer, count_error, grader_errors, is_name, parse_answer
from mathforge.evaluate.normalize import strict_normalize

__all__ = ["MODES", "explain", "grade", "grade_parsed", "grader_errors", "parse_answer"]

MODES = ("lenient", "strict")
REL_TOL = 1e-4
DEFAULT_TIMEOUT = 0.5  # seconds for the sympy step of one grade: a cap, not the usual cost (see bench)
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_DECIMAL_COMMA_RE = re.compile(r"-?\d+,\d+")
_SCALARS = ("number", "expression", "text")
_ORDERED = ("tuple", "interval")
_UNORDERED = ("set", "list", "union")


@dataclass
class Ctx:
    percent_pred: bool
    percent_gold: bool
    deadline: float
    trace: list[str] | None = field(default=None)

    def note(self, message: str) -> None:
        if self.trace is not None:
            self.trace.append(message)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown grading mode {mode!r}; allowed: {', '.join(MODES)}")


def grade(
    pred: str | None,
    gold: str | None,
    mode: str = "lenient",
    timeout: float = DEFAULT_TIMEOUT,
    *,
    boxes: str = "join",
    raise_on_error: bool = False,
) -> bool:
    """True when `pred` (a response or an answer) equals `gold`; never raises on garbage input.

    `mode="lenient"` (default) compares values; `mode="strict"` is the MATH/MetaMath/Skywork-Math
    normalised string check. `timeout` bounds the sympy fallback of one grade (seconds). `boxes`: "join"
    (boxes joined by "and"/","/"or" form one answer set) or "last" (see `extract`).
    """
    _check_mode(mode)
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    p = parse_answer(pred, "response", boxes, raise_on_error)
    g = parse_answer(gold, "gold", boxes, raise_on_error)
    return grade_parsed(p, g, mode, timeout, raise_on_error=raise_on_error)


def grade_parsed(
    pred: Answer,
    gold: Answer,
    mode: str = "lenient",
    timeout: float = DEFAULT_TIMEOUT,
    *,
    raise_on_error: bool = False,
    trace: list[str] | None = None,
) -> bool:
    """`grade` on answers parsed with `parse_answer` (parse the gold once, grade every sample against it)."""
    _check_mode(mode)
    if pred.whole is not None and pred.whole == gold.whole:
        if trace is not None:
            trace.append("identical texts: equal")
        return True
    if pred.kind == "none" or gold.kind == "none":
        if trace is not None:
            trace.append("nothing to grade on one side: not equal")
        return False
    try:
        if mode == "strict":
            verdict = strict_equal(pred.raw or "", gold.raw or "")
            if trace is not None:
                trace.append(f"strict: normalised strings {'equal' if verdict else 'differ'}")
            return verdict
        ctx = Ctx(pred.percent, gold.percent, time.monotonic() + timeout, trace)
        if pred == gold:
            ctx.note("same structure and text")
            return True
        choices = [_choice(a.raw or "") for a in (pred, gold)]
        if all(choices) and (len((pred.raw or "").strip()) == 1 or len((gold.raw or "").strip()) == 1):
            ctx.note(f"multiple choice: {choices[0]} vs {choices[1]}")
            return choices[0] == choices[1]
        return _equal(pred, gold, ctx)
    except Exception:
        if raise_on_error:
            raise
        count_error()
        if trace is not None:
            trace.append("grader error (counted): not equal")
        return False


_CHOICE_RE = re.compile(r"\s*\(?([A-E])(?:\)|\.\s|\.?$)")


def _choice(raw: str) -> str | None:
    """The option letter of a multiple-choice answer: "C", "(C)", "C. x = 42"."""
    match = _CHOICE_RE.match(raw)
    return match.group(1) if match else None


def explain(pred: str, gold: str, mode: str = "lenient", boxes: str = "join") -> tuple[bool, list[str]]:
    """The verdict and the lines behind it: extracted strings, parsed structures, the rules that decided."""
    p = parse_answer(pred, "response", boxes)
    g = parse_answer(gold, "gold", boxes)
    lines = [
        f"pred extracted: {p.raw!r}",
        f"gold extracted: {g.raw!r}",
        f"pred parsed:    {p.show()}",
        f"gold parsed:    {g.show()}",
    ]
    trace: list[str] = []
    verdict = grade_parsed(p, g, mode, trace=trace)
    lines += [f"rule: {t}" for t in trace]
    lines.append(f"verdict: {'EQUAL' if verdict else 'NOT EQUAL'} ({mode})")
    return verdict, lines


def strict_equal(pred: str, gold: str) -> bool:
    """MetaMath/Skywork-Math: numbers compared as floats (GSM8K), otherwise normalised strings."""
    p, g = pred.replace(",", "").strip(), gold.replace(",", "").strip()
    try:
        return float(p) == float(g)
    except ValueError:
        pass
    return strict_normalize(pred) == strict_normalize(gold)


def lenient_equal(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Lenient comparison of two extracted answers."""
    return grade_parsed(parse_answer(pred), parse_answer(gold), "lenient", timeout)


# --- comparison ---------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _value_side(eq: Answer, response: bool) -> Answer | None:
    """The value an equation gives: the side opposite a name; in a response also the result of a computation."""
    lhs, rhs = eq.items
    if is_name(_text(lhs)) and not is_name(_text(rhs)):
        return rhs
    if is_name(_text(rhs)) and not is_name(_text(lhs)):
        return lhs
    if is_name(_text(lhs)):
        return rhs
    if response and lhs.kind == "number":
        return rhs
    return None


def _text(a: Answer) -> str:
    """The source text of an answer (scalars) or a rendering good enough for the name test."""
    if a.kind in _SCALARS:
        return a.text
    if a.kind == "tuple" and a.op == "()" and all(i.kind in _SCALARS for i in a.items):
        return "(" + ", ".join(i.text for i in a.items) + ")"
    return "\0"  # never a name


def _equal(p: Answer, g: Answer, ctx: Ctx) -> bool:
    if g.kind == "equation" and p.kind != "equation":
        side = _value_side(g, response=False)
        ctx.note(f"gold equation {'gives the value ' + side.show() if side else 'names no quantity: not a value'}")
        return side is not None and _equal(p, side, ctx)
    if p.kind == "equation" and g.kind != "equation":
        side = _value_side(p, response=True)
        ctx.note(f"pred equation {'gives the value ' + side.show() if side else 'names no quantity: not a value'}")
        return side is not None and _equal(side, g, ctx)
    if p.kind in _SCALARS and g.kind in _SCALARS:
        return _scalar_equal(p.text, g.text, ctx)
    if p.kind == "equation":
        return _equation_equal(p, g, ctx)
    return _structures_equal(p, g, ctx)


def _structures_equal(p: Answer, g: Answer, ctx: Ctx) -> bool:
    """Relations, intervals, tuples, sets, lists, matrices (neither side an equation; not both scalars)."""
    if "relation" in (p.kind, g.kind):  # (a, b) next to a relation is an open interval
        p, g = (dataclasses.replace(a, kind="interval") if _pair(a) else a for a in (p, g))
    if {p.kind, g.kind} == {"relation", "interval"} or p.kind == g.kind == "relation":
        return _relation_equal(p, g, ctx)
    if p.kind == "matrix" and g.kind == "matrix":
        return _ordered(p.items, g.items, ctx, "matrix rows")
    if p.kind in _ORDERED and g.kind in _ORDERED:
        if p.op != g.op:
            ctx.note(f"brackets differ: {p.op} vs {g.op}")
            return False
        return _ordered(p.items, g.items, ctx, "tuple items")
    if p.kind == "list" and g.kind == "tuple" and g.op == "()":
        return _ordered(p.items, g.items, ctx, "a bare list answering a tuple, in order")
    if p.kind in _UNORDERED and g.kind in _UNORDERED and (p.kind == g.kind or "list" in (p.kind, g.kind)):
        return _same_multiset(p.items, g.items, ctx)
    for a, b in ((p, g), (g, p)):
        if a.kind == "list" and b.kind == "number" and _DECIMAL_COMMA_RE.fullmatch(a.text):
            ctx.note(f"{a.text!r} read with a decimal comma (the other side is one number)")
            return _scalar_equal(a.text.replace(",", "."), b.text, ctx)
    if p.kind in _UNORDERED and g.kind in _SCALARS and len(p.items) == 1:
        return _equal(p.items[0], g, ctx)
    if g.kind in _UNORDERED and p.kind in _SCALARS and len(g.items) == 1:
        return _equal(p, g.items[0], ctx)
    ctx.note(f"different kinds: {p.kind} vs {g.kind}")
    return False


def _pair(a: Answer) -> bool:
    return a.kind == "tuple" and a.op == "()" and len(a.items) == 2


def _ordered(ps: tuple[Answer, ...], gs: tuple[Answer, ...], ctx: Ctx, what: str) -> bool:
    if len(ps) != len(gs):
        ctx.note(f"{what}: {len(ps)} vs {len(gs)}")
        return False
    verdict = all(_equal(a, b, ctx) for a, b in zip(ps, gs))
    ctx.note(f"{what}: {'all equal in order' if verdict else 'a pair differs'}")
    return verdict


def _same_multiset(ps: tuple[Answer, ...], gs: tuple[Answer, ...], ctx: Ctx) -> bool:
    if len(ps) != len(gs):
        ctx.note(f"unordered: {len(ps)} items vs {len(gs)}")
        return False
    unused = list(range(len(gs)))
    for item in ps:
        for k in unused:
            if _equal(item, gs[k], ctx):
                unused.remove(k)
                break
        else:
            ctx.note(f"unordered: {item.show()} matches nothing left")
            return False
    ctx.note("unordered: every item matched")
    return True


def _equation_equal(p: Answer, g: Answer, ctx: Ctx) -> bool:
    (pl, pr), (gl, gr) = p.items, g.items
    p_side, g_side = _value_side(p, response=False), _value_side(g, response=False)
    if p_side is not None and g_side is not None:
        p_name, g_name = _text(pl if p_side is pr else pr), _text(gl if g_side is gr else gr)
        if _function_of(p_name, g_name):
            ctx.note(f"equations: {p_name} and {g_name} name the same function, right sides compared")
            return _equal(p_side, g_side, ctx)
        if not _mentions(_text(p_side) + " " + _text(g_side), p_name + " " + g_name):
            ctx.note("equations: both name a quantity, values compared")
            return _equal(p_side, g_side, ctx)
    if all(x.kind in _SCALARS for x in (pl, pr, gl, gr)):
        verdict = _proportional(f"({pl.text})-({pr.text})", f"({gl.text})-({gr.text})", ctx)
        if verdict is not None:
            ctx.note(f"equations: lhs - rhs {'proportional' if verdict else 'not proportional'}")
            return verdict
    verdict = _equal(pl, gl, ctx) and _equal(pr, gr, ctx)
    ctx.note(f"equations: sides compared one by one: {'equal' if verdict else 'differ'}")
    return verdict


def _proportional(a: str, b: str, ctx: Ctx, sign: int = 0) -> bool | None:
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


def _relations(a: Answer) -> list[tuple[str, str]] | None:
    """A relation or a named interval as [(difference text, operator)] with operators <, \\leq, \\neq."""
    if a.kind == "interval":
        lo, hi = a.items
        out = []
        if lo.text != "-\\infty":
            out.append((f"({lo.text})-({a.text})", "<" if a.op[0] == "(" else "\\leq"))
        if hi.text != "\\infty":
            out.append((f"({a.text})-({hi.text})", "<" if a.op[1] == ")" else "\\leq"))
        return out
    ops = a.op.split()
    out = []
    for (left, right), op in zip(zip(a.items, a.items[1:]), ops):
        if op in (">", "\\geq"):
            left, right, op = right, left, _flip(op)
        out.append((f"({left.text})-({right.text})", op))
    return out


def _flip(op: str) -> str:
    return {">": "<", "\\geq": "\\leq"}[op]


def _variable_of(relation: Answer) -> str | None:
    """The one variable a relation is about (x in 2x < 4), or None."""
    try:
        names = quick.parse("+".join(f"({item.text})" for item in relation.items)).variables
    except (quick.Unsupported, RecursionError):
        return None
    return next(iter(names))[2:] if len(names) == 1 else None


def _named(a: Answer, other: Answer) -> Answer | None:
    """An interval without a variable (`(-\\infty, 2)`) compared with a relation: over the relation's variable."""
    if a.kind == "interval" and not a.text and other.kind == "relation":
        name = _variable_of(other)
        return dataclasses.replace(a, text=name) if name else None
    return a


def _relation_equal(p: Answer, g: Answer, ctx: Ctx) -> bool:
    named_p, named_g = _named(p, g), _named(g, p)
    if named_p is None or named_g is None:
        ctx.note("relation vs interval: the relation is not about one variable")
        return False
    p, g = named_p, named_g
    rp, rg = _relations(p), _relations(g)
    if not rp or not rg or len(rp) != len(rg):
        ctx.note("relations: different shapes")
        return False
    for (dp, op), (dg, og) in zip(sorted(rp, key=lambda r: r[1]), sorted(rg, key=lambda r: r[1])):
        if op != og:
            ctx.note("relations: operators differ")
            return False
        sign = 0 if op == "\\neq" else 1
        verdict = _proportional(dp, dg, ctx, sign)
        if verdict is None:
            verdict = _squash(dp) == _squash(dg)
        if not verdict:
            ctx.note("relations: sides not positively proportional")
            return False
    ctx.note("relations: the same (lhs - rhs positively proportional, same operators)")
    return True


def _function_of(a: str, b: str) -> bool:
    """`y` and `f(x)` (or `f(x)` and `g(x)`): both name a function of one variable."""
    forms = [re.fullmatch(r"\s*(?:y|[a-zA-Z]\s*\(\s*([a-z])\s*\))\s*", t) for t in (a, b)]
    if not all(forms) or _squash(a) == _squash(b):
        return False
    args = {f.group(1) for f in forms if f.group(1)}
    return len(args) == 1


def _mentions(text: str, names: str) -> bool:
    """True when a single-letter name in `names` occurs as a letter in `text` (y = 2x+3 vs x = ...)."""
    letters = set(re.findall(r"(?<!\\)\b[a-zA-Z]\b", names))
    return any(re.search(rf"(?<![a-zA-Z\\]){re.escape(c)}(?![a-zA-Z])", text) for c in letters)


def _scalar_equal(p: str, g: str, ctx: Ctx) -> bool:
    if _squash(p) == _squash(g):
        ctx.note(f"same text: {p!r}")
        return bool(p)
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


def _symbolic_equal(p: str, g: str, ctx: Ctx) -> bool | None:
    start = time.monotonic()
    symbolic.load()
    ctx.deadline += time.monotonic() - start  # a one-off import is not part of the budget
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        ctx.note("sympy: no time left, cannot tell")
        return None
    rel = REL_TOL if re.search(r"\d\.\d|\d\.(?!\d)|\.\d", p + " " + g) else 1e-12
    try:
        verdict = symbolic.run_bounded(symbolic.compare, p, g, rel, timeout=left)
    except symbolic.GradeTimeout:
        ctx.note("sympy: out of time, cannot tell")
        return None
    except symbolic.Unreadable as error:
        ctx.note(f"sympy: cannot read ({error})")
        return None
    ctx.note(f"sympy: {'cannot tell' if verdict is None else 'equal' if verdict else 'differ'}")
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
    if not percent:
        return [value]
    return [value / 100, value] if _PLAIN_NUMBER_RE.fullmatch(other.strip()) else [value / 100]


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
