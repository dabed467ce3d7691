"""Relations and intervals compared as the same set of conditions: each side becomes (lhs - rhs, operator) pairs
with < or \\leq (a > b flipped to b - a < 0), and two relations agree when their differences are positively
proportional with the same operators: `-x > -1` is `x < 1` is `(-\\infty, 1)` (over the relation's variable).
"""

from __future__ import annotations

import dataclasses

from mathforge.evaluate import quick
from mathforge.evaluate.answer import Answer
from mathforge.evaluate.values import Ctx, proportional, squash


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


def relation_equal(p: Answer, g: Answer, ctx: Ctx) -> bool:
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
        verdict = proportional(dp, dg, sign)
        if verdict is None:
            verdict = squash(dp) == squash(dg)
        if not verdict:
            ctx.note("relations: sides not positively proportional")
            return False
    ctx.note("relations: the same (lhs - rhs positively proportional, same operators)")
    return True
