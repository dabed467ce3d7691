"""Grading: is a predicted answer equal to the gold one?

    grade(r"The area is $\\boxed{\\dfrac{1}{2}}$.", "0.5")             # True
    grade("50\\%", "0.5"), grade("(1,2]", "1 < x \\leq 2")           # True, True
    grade(pred, gold, mode="strict")   # MATH / MetaMath / Skywork-Math string check

    gold = parse_answer(item.gold, source="gold")                    # once per problem
    grade_parsed(parse_answer(response, source="response"), gold)    # per sample

Both sides are parsed once into an `answer.Answer` (extracted by position, cleaned by
`normalize.clean`, split into a typed structure), then compared structure against structure:
- sets and bare lists ignore order, tuples, intervals and matrices do not (a bare list may answer a
  tuple in order; a one-row or one-column matrix answers a bracketed list in order); a union matches a union;
  ± inside a set gives both values;
- an equation answers a value when one side names the quantity (`x = 5`, `(p, q) = (3, 2)`,
  `\\angle APC = 74^\\circ`, `2 = x`) or, in a response, when its left side is a computation (`2+3 = 5`);
  two equations agree when their named sides give the same value, else when lhs - rhs are proportional;
- inequalities and intervals are the same relation when (lhs - rhs) are positively proportional with the
  same operators or negatively with flipped ones (`-x > -1` is `x < 1` is `(-\\infty, 1)`; `relations`);
- scalars by value (`values`): a fast exact path (`quick`, mpmath at 40 digits; variables at fixed test points),
  then latex2sympy2_extended + sympy (`symbolic`, time-bounded), then as text (clock times as times of day); sums, products and
  subscripted terms are evaluated at small integer points on the fast path. A plain decimal is read by its
  shown digits (`rounding`: `1.414` is √2, `920.25` is not `920.26`), exact values exactly, a decimal inside an
  expression or at variable test points within a relative 1e-4; x% is x/100, and also x when the
  other side is a plain number ("50" answering "what percent?").

Never raises on strings and never hangs: the sympy step runs under a per-grade budget of CPU seconds (`timeout`,
the grading thread's own CPU time, so a busy machine does not change a verdict), and an
unexpected failure is counted (`grader_errors()`, shown in the eval report) and graded "not equal" —
or raised with `raise_on_error=True`. `explain(pred, gold)` returns the extracted strings, the parsed
structures and the rules that decided (`mathforge grade --explain`).
"""

from __future__ import annotations

import dataclasses
import re

from mathforge.errors import ConfigError
from mathforge.evaluate.answer import Answer, count_error, grader_errors, is_name, parse_answer
from mathforge.evaluate.normalize import strict_normalize
from mathforge.evaluate.relations import relation_equal
from mathforge.evaluate.values import Ctx, proportional, scalar_equal, squash

__all__ = ["MODES", "explain", "grade", "grade_parsed", "grader_errors", "parse_answer"]

MODES = ("lenient", "strict")
DEFAULT_TIMEOUT = 0.5  # CPU seconds for the sympy step of one grade (its one-off import and parser set-up excluded)
_DECIMAL_COMMA_RE = re.compile(r"-?\d+,\d+")
_SCALARS = ("number", "expression", "text")
_ORDERED = ("tuple", "interval")
_UNORDERED = ("set", "list", "union")


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
        ctx = Ctx(pred.percent, gold.percent, timeout, trace)
        if pred.unit_power and gold.unit_power and pred.unit_power != gold.unit_power:
            ctx.note(f"units of power {pred.unit_power} vs {gold.unit_power} (area vs volume): not equal")
            return False
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


# --- comparison ---------------------------------------------------------------------------------


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
        return scalar_equal(p.text, g.text, ctx)
    if p.kind == "equation":
        return _equation_equal(p, g, ctx)
    return _structures_equal(p, g, ctx)


def _structures_equal(p: Answer, g: Answer, ctx: Ctx) -> bool:
    """Relations, intervals, tuples, sets, lists, matrices (neither side an equation; not both scalars)."""
    if "relation" in (p.kind, g.kind):  # (a, b) next to a relation is an open interval
        p, g = (dataclasses.replace(a, kind="interval") if _pair(a) else a for a in (p, g))
    if {p.kind, g.kind} == {"relation", "interval"} or p.kind == g.kind == "relation":
        return relation_equal(p, g, ctx)
    if p.kind == "matrix" and g.kind == "matrix":
        return _ordered(p.items, g.items, ctx, "matrix rows")
    for a, b in ((p, g), (g, p)):
        if a.kind == "matrix" and b.kind in _ORDERED and b.op in ("()", "[]") and _vector(a) is not None:
            return _ordered(_vector(a), b.items, ctx, "a one-row or one-column matrix against a bracketed list")
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
            return scalar_equal(a.text.replace(",", "."), b.text, ctx)
    if p.kind in _UNORDERED and g.kind in _SCALARS and len(p.items) == 1:
        return _equal(p.items[0], g, ctx)
    if g.kind in _UNORDERED and p.kind in _SCALARS and len(g.items) == 1:
        return _equal(p, g.items[0], ctx)
    ctx.note(f"different kinds: {p.kind} vs {g.kind}")
    return False


def _vector(matrix: Answer) -> tuple[Answer, ...] | None:
    """The entries of a matrix with one row or one column, in order (None for any other matrix)."""
    rows = matrix.items
    if len(rows) == 1 and len(rows[0].items) > 1:
        return rows[0].items
    if len(rows) > 1 and all(len(row.items) == 1 for row in rows):
        return tuple(row.items[0] for row in rows)
    return None


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
        verdict = proportional(f"({pl.text})-({pr.text})", f"({gl.text})-({gr.text})")
        if verdict is not None:
            ctx.note(f"equations: lhs - rhs {'proportional' if verdict else 'not proportional'}")
            return verdict
    verdict = _equal(pl, gl, ctx) and _equal(pr, gr, ctx)
    ctx.note(f"equations: sides compared one by one: {'equal' if verdict else 'differ'}")
    return verdict


def _function_of(a: str, b: str) -> bool:
    """`y` and `f(x)` (or `f(x)` and `g(x)`): both name a function of one variable."""
    forms = [re.fullmatch(r"\s*(?:y|[a-zA-Z]\s*\(\s*([a-z])\s*\))\s*", t) for t in (a, b)]
    if not all(forms) or squash(a) == squash(b):
        return False
    args = {f.group(1) for f in forms if f.group(1)}
    return len(args) == 1


def _mentions(text: str, names: str) -> bool:
    """True when a single-letter name in `names` occurs as a letter in `text` (y = 2x+3 vs x = ...)."""
    letters = set(re.findall(r"(?<!\\)\b[a-zA-Z]\b", names))
    return any(re.search(rf"(?<![a-zA-Z\\]){re.escape(c)}(?![a-zA-Z])", text) for c in letters)
