"""The symbolic backend: every answer re-derived independently with sympy; determinism; the difficulty knobs."""

from __future__ import annotations

import re
from itertools import product

import pytest
import sympy

from mathforge.errors import ConfigError
from mathforge.synth.symbolic import (
    ARITH_FAMILIES,
    ARITH_TIERS,
    FAMILIES,
    Generator,
    compact_column,
    generate,
    generate_arithmetic,
)


def parse_answer(text: str) -> sympy.Expr:
    """The written answer ('42', '-\\frac{3}{4}', '12\\pi', '\\pi') as a sympy number, by our own small parser."""
    text = re.sub(r"\\frac\{(-?\d+)\}\{(\d+)\}", r"(\1)/(\2)", text)
    text = re.sub(r"(\d|\))\\pi", r"\1*pi", text).replace("\\pi", "pi")
    return sympy.sympify(text, rational=True)


def reference_value(check: dict) -> sympy.Expr:
    """The answer computed by sympy from the problem's machine-readable statement alone."""
    if "dice" in check:
        outcomes = list(product(range(1, check["sides"] + 1), repeat=check["dice"]))
        return sympy.Rational(sum(1 for o in outcomes if sum(o) == check["sum"]), len(outcomes))
    if "expr" in check:
        return (
            sympy.nsimplify(sympy.sympify(check["expr"]))
            if "Mod" not in check["expr"]
            else sympy.sympify(check["expr"])
        )
    syms = sympy.symbols(check["vars"])
    eqs = [sympy.sympify(e) for e in check["solve"]]
    sols = sympy.solve(eqs, syms, dict=True)
    assert sols, check
    if check["target"] == "max":
        return max(s[syms[0]] for s in sols)
    if check["target"] == "sumsq":
        roots = sympy.roots(sympy.Poly(eqs[0], syms[0]))  # with multiplicity
        return sum(r**2 * m for r, m in roots.items())
    assert len(sols) == 1
    return sympy.sympify(check["target"]).subs(sols[0])


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_every_answer_matches_an_independent_sympy_evaluation(difficulty):
    problems = generate(150, difficulty=difficulty, seed=11)
    assert {p.difficulty for p in problems} == {difficulty}
    for p in problems:
        got = parse_answer(p.answer)
        want = reference_value(p.check)
        assert sympy.simplify(got - want) == 0, (p.question, p.answer, want)
        assert p.solution.endswith(f"The answer is: {p.answer}")
        assert p.stage == ("normal" if difficulty <= 3 else "hard")


def test_every_family_is_exercised_and_checked():
    seen = set()
    for name, (_, levels) in FAMILIES.items():
        for level in levels:
            for p in generate(20, difficulty=level, families=[name], seed=level):
                assert p.family == name
                assert sympy.simplify(parse_answer(p.answer) - reference_value(p.check)) == 0
                seen.add(name)
    assert seen == set(FAMILIES)


def test_items_depend_only_on_seed_and_index():
    full = generate(50, seed=5)
    tail = generate(20, seed=5, start=30)
    assert [p.question for p in full[30:]] == [p.question for p in tail]
    assert [p.question for p in generate(50, seed=6)] != [p.question for p in full]


def test_easy_tier_is_column_arithmetic_in_a_fixed_format():
    for p in generate(200, difficulty="easy", max_digits=2, seed=1):
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", p.question).groups()
        assert len(a) <= 2
        lines = p.solution.split("\n")
        assert lines[-2] == f"So {a} {op} {b} = {p.answer}."
        for line in lines[:-2]:
            assert re.fullmatch(
                r"[A-Z][a-z-]+: (\d+ [-+*] \d+ [-+] \d+ = \d+, write \d, (carry|borrow) \d"
                r"|write the carry \d)\.",
                line,
            ), line


def test_stage_split_and_custom_answer_format():
    hard = generate(100, stage="hard", seed=2, answer_template="\\boxed{{{answer}}}")
    assert {p.difficulty for p in hard} == {4, 5}
    assert all(p.solution.endswith(f"\\boxed{{{p.answer}}}") for p in hard)
    assert {p.difficulty for p in generate(100, stage="normal")} == {1, 2, 3}


def test_bad_knobs_raise_config_errors_naming_them():
    with pytest.raises(ConfigError, match="difficulty"):
        Generator(difficulty=7)
    with pytest.raises(ConfigError, match="stage"):
        Generator(stage="medium")
    with pytest.raises(ConfigError, match="families: unknown nope"):
        Generator(families=["nope"])
    with pytest.raises(ConfigError, match="outside stage"):
        Generator(difficulty=5, stage="normal")


# --- compact column arithmetic (the CPU demo's tiers) ---------------------------------------------------------

STEP = {
    "+": re.compile(r"(\d)\+(\d)\+([01])=(\d\d)"),
    "-": re.compile(r"(\d\d)-(\d)-([01])=(\d)"),
    "*": re.compile(r"(\d)\*(\d)\+(\d)=(\d\d)"),
}


def replay_steps(a: int, op: str, b: int, lines: list[str]) -> int:
    """Checks every written step against the operands (digits, carries, each step's arithmetic) and returns
    the number the steps spell out, rebuilt from the written digits only."""
    width = len(str(a))
    assert len(lines) == width
    carry, digits = 0, []
    for col, line in enumerate(lines):
        m = STEP[op].fullmatch(line)
        assert m, line
        x, y, c, r = (int(g) for g in m.groups())
        assert c == carry, (line, carry)
        if op == "-":
            assert x % 10 == a // 10**col % 10 and x // 10 in (0, 1) and y == b // 10**col % 10
            assert x - y - c == r and (x >= 10) == (a // 10**col % 10 - y - c < 0)
            carry, digits = x // 10, [*digits, r]
        else:
            assert x == a // 10**col % 10 and y == (b if op == "*" else b // 10**col % 10)
            assert (x * y if op == "*" else x + y) + c == r
            carry, digits = r // 10, [*digits, r % 10]
    assert op != "-" or carry == 0
    return sum(d * 10**i for i, d in enumerate(digits)) + carry * 10**width


@pytest.mark.parametrize("stage", ["normal", "hard"])
def test_compact_arithmetic_steps_and_answers_are_right(stage):
    tier = ARITH_TIERS[stage]
    problems = generate_arithmetic(400, stage=stage, seed=3)
    assert {p.family for p in problems} == {ARITH_FAMILIES[op] for op in tier.ops}
    for p in problems:
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", p.question).groups()
        a, b = int(a), int(b)
        assert len(str(a)) == tier.width and (len(str(b)) == 1 if op == "*" else len(str(b)) == tier.width)
        *steps, last = p.solution.split("\n")
        assert last == f"The answer is: {p.answer}"
        want = sympy.sympify(p.check["expr"])  # independent: sympy evaluates the question's expression
        assert int(p.answer) == want == p.value == replay_steps(a, op, b, steps)
        assert p.stage == stage and p.difficulty == tier.difficulty and want >= 0


def test_compact_arithmetic_hand_examples_and_determinism():
    assert compact_column(810, "-", 616, 3) == (["10-6-0=4", "11-1-1=9", "08-6-1=1"], 194)
    assert compact_column(999, "+", 999, 3) == (["9+9+0=18", "9+9+1=19", "9+9+1=19"], 1998)
    assert compact_column(9842, "*", 9, 4) == (["2*9+0=18", "4*9+1=37", "8*9+3=75", "9*9+7=88"], 88578)
    with pytest.raises(ValueError, match="negative"):
        compact_column(100, "-", 200, 3)
    run = generate_arithmetic(30, stage="hard", seed=4)
    assert [p.solution for p in generate_arithmetic(10, stage="hard", seed=4, start=20)] == [
        p.solution for p in run[20:]
    ]
    assert [p.question for p in generate_arithmetic(30, stage="hard", seed=5)] != [p.question for p in run]
    with pytest.raises(ConfigError, match="stage = 'medium'"):
        generate_arithmetic(1, stage="medium")
