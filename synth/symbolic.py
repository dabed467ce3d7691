"""The `symbolic` backend: math problems built from their answers and solved exactly, no model needed.

    from mathforge.synth.symbolic import generate
    problems = generate(1000, difficulty=1, seed=0)          # easy digit-level arithmetic
    problems = generate(1000, stage="hard", seed=1)          # difficulty 4-5
    p = problems[0]; p.question, p.solution, p.answer        # solution ends "The answer is: <answer>"

Each family draws its numbers so that the answer is exact (integers or reduced fractions, `Fraction`
arithmetic, never floats), writes a short worked solution, and re-checks the answer by substituting
it back into the problem's defining relation (a different path from the construction). Problem i of
a run depends only on (seed, i), so shards and resumed runs regenerate exactly the same items.

Difficulty 1 is the "easy, learnable" tier: 2-3 digit addition, subtraction and one-digit
multiplication written column by column in one fixed format. Difficulty 2-5 go through grade-school
word problems, fractions, percentages, ratios, middle-school equations and probability, high-school
quadratics, systems and sequences, and competition-style counting and number theory. Stage "normal"
is difficulty 1-3 and stage "hard" is 4-5 (the Skywork-Math two-stage split).

`Problem.check` is a machine-checkable statement of the problem (a sympy expression, equations to
solve, or dice to enumerate) so tests can re-derive every answer independently with sympy.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import product
from typing import TYPE_CHECKING, Any

from mathforge.errors import ConfigError
from mathforge.synth.common import PIPELINES

if TYPE_CHECKING:
    from mathforge.synth.config import SynthConfig

DEFAULT_ANSWER_TEMPLATE = "The answer is: {answer}"
STAGES = ("normal", "hard")
STAGE_LEVELS = {"normal": (1, 2, 3), "hard": (4, 5)}
EDUCATION = {1: "grade_school", 2: "grade_school", 3: "middle_school", 4: "high_school", 5: "competition"}
PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")
NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jamal",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
    "Uma",
    "Vera",
    "Wen",
    "Yusuf",
    "Zoe",
)
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "shells", "cards", "stamps", "beads")


@dataclass(frozen=True)
class Problem:
    """One generated problem: question, worked solution (ending in the answer line) and exact answer."""

    id: str
    family: str
    difficulty: int
    stage: str  # "normal" or "hard"
    education: str  # grade_school / middle_school / high_school / competition
    question: str
    solution: str
    answer: str  # as written after the marker: "42", "\frac{3}{4}", "12\pi"
    value: Fraction  # the answer's exact value (the coefficient of pi for answers in pi)
    check: dict[str, Any] = field(default_factory=dict)

    def row(self, seed: int | None = None) -> dict[str, Any]:
        """The dataset row `{"prompt", "response", "meta"}` the trainer reads."""
        return {
            "prompt": self.question,
            "response": self.solution,
            "meta": {
                "id": self.id,
                "pipeline": "symbolic",
                "method": self.family,
                "stage": self.stage,
                "difficulty": self.difficulty,
                "education": self.education,
                "seed_id": None,
                "model": "symbolic",
                "sampling": {"seed": seed},
                "answer": self.answer,
                "verified": True,
                "check": self.check,
            },
        }


def fmt(x: Fraction | int) -> str:
    """An exact number as the answer is written: integers plainly, fractions as \\frac{p}{q}."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _plain(x: Fraction | int) -> str:
    """A number inside solution text: integers plainly, fractions as p/q."""
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


class _Verify(Exception):
    pass


def _verify(ok: bool) -> None:
    if not ok:
        raise _Verify


# --- difficulty 1: column arithmetic ------------------------------------------------------------------------


def _digits(rng: random.Random, lo: int, hi: int) -> int:
    n = rng.randint(lo, hi)
    return rng.randint(10 ** (n - 1), 10**n - 1)


def add_digits(rng: random.Random, level: int, max_digits: int = 3):
    a, b = _digits(rng, 2, max_digits), _digits(rng, 2, max_digits)
    steps, carry, total = [], 0, a + b
    for col in range(max(len(str(a)), len(str(b)))):
        da, db = a // 10**col % 10, b // 10**col % 10
        s = da + db + carry
        steps.append(f"{PLACES[col].capitalize()}: {da} + {db} + {carry} = {s}, write {s % 10}, carry {s // 10}.")
        carry = s // 10
    if carry:
        steps.append(f"{PLACES[col + 1].capitalize()}: write the carry {carry}.")
    steps.append(f"So {a} + {b} = {total}.")
    _verify(total - b == a)
    return f"What is {a} + {b}?", steps, Fraction(total), {"expr": f"{a} + {b}"}


def sub_digits(rng: random.Random, level: int, max_digits: int = 3):
    a, b = _digits(rng, 2, max_digits), _digits(rng, 2, max_digits)
    a, b = max(a, b), min(a, b)
    steps, borrow, diff = [], 0, a - b
    for col in range(len(str(a))):
        da, db = a // 10**col % 10, b // 10**col % 10
        top, nb = da, 0
        if da - borrow < db:
            top, nb = da + 10, 1
        d = top - db - borrow
        steps.append(f"{PLACES[col].capitalize()}: {top} - {db} - {borrow} = {d}, write {d}, borrow {nb}.")
        borrow = nb
    steps.append(f"So {a} - {b} = {diff}.")
    _verify(diff + b == a and borrow == 0)
    return f"What is {a} - {b}?", steps, Fraction(diff), {"expr": f"{a} - {b}"}


def mul_digit(rng: random.Random, level: int, max_digits: int = 3):
    a, b = _digits(rng, 2, max_digits), rng.randint(2, 9)
    steps, carry, prod = [], 0, a * b
    for col in range(len(str(a))):
        da = a // 10**col % 10
        s = da * b + carry
        steps.append(f"{PLACES[col].capitalize()}: {da} * {b} + {carry} = {s}, write {s % 10}, carry {s // 10}.")
        carry = s // 10
    if carry:
        steps.append(f"{PLACES[col + 1].capitalize()}: write the carry {carry}.")
    steps.append(f"So {a} * {b} = {prod}.")
    _verify(prod % b == 0 and prod // b == a)
    return f"What is {a} * {b}?", steps, Fraction(prod), {"expr": f"{a} * {b}"}


# --- difficulty 2: grade-school word problems, fractions, percentages, ratios -----------------------------


def word_problem(rng: random.Random, level: int, max_digits: int = 3):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        start, bags, per, gave = rng.randint(5, 60), rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 20)
        got = bags * per
        total = start + got - gave
        q = (
            f"{name} has {start} {item}. {name} buys {bags} packs with {per} {item} in each pack and then gives "
            f"{gave} {item} to a friend. How many {item} does {name} have now?"
        )
        steps = [
            f"The packs hold {bags} * {per} = {got} {item}.",
            f"After buying, {name} has {start} + {got} = {start + got} {item}.",
            f"After giving some away: {start + got} - {gave} = {total}.",
        ]
        check = f"{start} + {bags}*{per} - {gave}"
        _verify(total + gave - got == start)
    elif kind == 1:
        price, qty, paid_extra = rng.randint(2, 25), rng.randint(2, 12), rng.randint(1, 30)
        cost = price * qty
        paid = cost + paid_extra
        q = (
            f"{name} buys {qty} notebooks that cost ${price} each and pays with ${paid}. "
            f"How many dollars of change does {name} get?"
        )
        steps = [
            f"The notebooks cost {qty} * {price} = {cost} dollars.",
            f"The change is {paid} - {cost} = {paid_extra} dollars.",
        ]
        total, check = paid_extra, f"{paid} - {qty}*{price}"
        _verify(total + cost == paid)
    elif kind == 2:
        per_day, days, shared = rng.randint(2, 15), rng.randint(2, 7), rng.randint(2, 6)
        made = per_day * days * shared
        q = (
            f"{name} makes {per_day * shared} {item} every day for {days} days and shares them equally among "
            f"{shared} friends. How many {item} does each friend get?"
        )
        steps = [
            f"In {days} days {name} makes {per_day * shared} * {days} = {made} {item}.",
            f"Each friend gets {made} / {shared} = {per_day * days}.",
        ]
        total, check = per_day * days, f"{per_day * shared}*{days}/{shared}"
        _verify(total * shared == made)
    else:
        a, b = rng.randint(10, 90), rng.randint(2, 5)
        c = a * b
        q = (
            f"{name} read {a} pages on Monday and {b} times as many pages on Tuesday. "
            f"How many pages did {name} read on the two days together?"
        )
        steps = [f"On Tuesday {name} read {b} * {a} = {c} pages.", f"Together: {a} + {c} = {a + c} pages."]
        total, check = a + c, f"{a} + {b}*{a}"
        _verify(total == a * (b + 1))
    return q, steps, Fraction(total), {"expr": check}


def fractions(rng: random.Random, level: int, max_digits: int = 3):
    b, d = rng.randint(2, 9 if level <= 2 else 15), rng.randint(2, 9 if level <= 2 else 15)
    a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
    x, y = Fraction(a, b), Fraction(c, d)
    op = rng.choice("+-*" if level <= 2 else "+-*/")
    if op == "*":
        r = x * y
        steps = [f"Multiply numerators and denominators: ({a} * {c}) / ({b} * {d}) = {a * c}/{b * d}."]
    elif op == "/":
        r = x / y
        steps = [f"Dividing by {c}/{d} is multiplying by {d}/{c}: ({a} * {d}) / ({b} * {c}) = {a * d}/{b * c}."]
    else:
        lcd = b * d // math.gcd(b, d)
        na, nc = a * lcd // b, c * lcd // d
        r = x + y if op == "+" else x - y
        top = na + nc if op == "+" else na - nc
        steps = [
            f"The common denominator is {lcd}: {a}/{b} = {na}/{lcd} and {c}/{d} = {nc}/{lcd}.",
            f"{na}/{lcd} {op} {nc}/{lcd} = {top}/{lcd}.",
        ]
    steps.append(f"In lowest terms this is {_plain(r)}.")
    _verify((r - y == x) if op == "+" else (r + y == x) if op == "-" else (r / y == x) if op == "*" else (r * y == x))
    return (
        f"Compute {a}/{b} {op} {c}/{d}. Give the answer in lowest terms.",
        steps,
        r,
        {"expr": f"Rational({a},{b}) {op} Rational({c},{d})"},
    )


def percent(rng: random.Random, level: int, max_digits: int = 3):
    name = rng.choice(NAMES)
    p = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75])
    base = rng.randint(2, 40) * (100 // math.gcd(p, 100))
    off = Fraction(p * base, 100)
    if rng.random() < 0.5:
        q = f"What is {p}% of {base}?"
        steps = [f"{p}% of {base} is {p}/100 * {base} = {_plain(off)}."]
        r, check = off, f"Rational({p},100)*{base}"
    else:
        q = f"A jacket costs ${base}. {name} buys it at a {p}% discount. How many dollars does {name} pay?"
        r = base - off
        steps = [
            f"The discount is {p}/100 * {base} = {_plain(off)} dollars.",
            f"{name} pays {base} - {_plain(off)} = {_plain(r)} dollars.",
        ]
        check = f"{base}*(1 - Rational({p},100))"
    _verify(r * 100 % 1 == 0 and (r == off or (base - r) * 100 == p * base))
    return q, steps, r, {"expr": check}


def ratio(rng: random.Random, level: int, max_digits: int = 3):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    while math.gcd(a, b) != 1 or a == b:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
    unit = rng.randint(2, 20)
    total = (a + b) * unit
    n1, n2 = rng.sample(NAMES, 2)
    q = f"{n1} and {n2} share {total} marbles in the ratio {a}:{b}. How many marbles does {n1} get?"
    steps = [
        f"There are {a} + {b} = {a + b} equal parts.",
        f"One part is {total} / {a + b} = {unit} marbles.",
        f"{n1} gets {a} * {unit} = {a * unit} marbles.",
    ]
    _verify(a * unit * b == b * unit * a and a * unit + b * unit == total)
    return q, steps, Fraction(a * unit), {"expr": f"{total}*Rational({a},{a + b})"}


# --- difficulty 3-5: algebra, sequences, counting, probability, geometry, number theory ------------------


def linear_eq(rng: random.Random, level: int, max_digits: int = 3):
    x = rng.randint(-12, 12) if level >= 4 else rng.randint(1, 15)
    a = rng.choice([k for k in range(-9, 10) if k not in (0, 1)]) if level >= 4 else rng.randint(2, 9)
    b = rng.randint(-20, 20)
    if level <= 3:
        c = a * x + b
        q = f"Solve for x: {a}x + {b} = {c}." if b >= 0 else f"Solve for x: {a}x - {-b} = {c}."
        steps = [f"Move the constant: {a}x = {c} - ({b}) = {c - b}.", f"Divide by {a}: x = {c - b}/{a} = {x}."]
        eq = f"{a}*x + ({b}) - ({c})"
    else:
        cc = rng.choice([k for k in range(-9, 10) if k != a])
        d = a * x + b - cc * x
        q = f"Solve for x: {a}x + ({b}) = {cc}x + ({d})."
        steps = [
            f"Collect x on the left: {a}x - ({cc})x = {d} - ({b}).",
            f"So {a - cc}x = {d - b}.",
            f"x = {d - b}/{a - cc} = {x}.",
        ]
        eq = f"{a}*x + ({b}) - ({cc}*x + ({d}))"
    _verify(eval_linear(eq, x) == 0)
    return q, steps, Fraction(x), {"solve": [eq], "vars": ["x"], "target": "x"}


def eval_linear(expr: str, x: int) -> int:
    """Evaluates our generated integer expressions in x (digits, + - *, parentheses) without sympy."""
    return eval(expr, {"__builtins__": {}}, {"x": x})  # noqa: S307 - the expression is our own output


def _poly(coefs: list[int]) -> str:
    """x^2 - 5x + 6 from [1, -5, 6], leaving out zero terms and unit coefficients."""
    out = []
    for power, c in zip(range(len(coefs) - 1, -1, -1), coefs):
        if c == 0:
            continue
        mag = "" if abs(c) == 1 and power else str(abs(c))
        term = mag + ("x" if power == 1 else f"x^{power}" if power else "")
        out.append(("- " if c < 0 else "+ ") + term if out else ("-" if c < 0 else "") + term)
    return " ".join(out) or "0"


def quadratic(rng: random.Random, level: int, max_digits: int = 3):
    r1, r2 = rng.randint(-9, 9), rng.randint(-9, 9)
    s, p = r1 + r2, r1 * r2
    poly = _poly([1, -s, p]) + " = 0"
    eq = f"x**2 - ({s})*x + ({p})"
    if level == 4:
        ans = max(r1, r2)
        q = f"Find the larger root of {poly}." if r1 != r2 else f"Find the root of {poly}."
        steps = [
            f"We need two numbers with sum {s} and product {p}: {min(r1, r2)} and {max(r1, r2)}.",
            f"So the equation factors as (x - ({r1}))(x - ({r2})) = 0.",
            f"The larger root is {ans}.",
        ]
        target = "max"
    else:
        ans = r1 * r1 + r2 * r2
        q = f"Let r and s be the roots of {poly}. Find r^2 + s^2."
        steps = [f"By Vieta, r + s = {s} and rs = {p}.", f"r^2 + s^2 = (r + s)^2 - 2rs = {s * s} - ({2 * p}) = {ans}."]
        target = "sumsq"
    _verify(all(eval_linear(eq, r) == 0 for r in (r1, r2)))
    return q, steps, Fraction(ans), {"solve": [eq], "vars": ["x"], "target": target}


def system2(rng: random.Random, level: int, max_digits: int = 3):
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    while True:
        a, b, c, d = (rng.randint(-6, 6) for _ in range(4))
        if a * d - b * c != 0 and 0 not in (a, b, c, d):
            break
    e, f = a * x + b * y, c * x + d * y
    det = a * d - b * c
    q = f"Solve the system {a}x + ({b})y = {e} and {c}x + ({d})y = {f}. What is x + y?"
    steps = [
        f"The determinant is ({a})({d}) - ({b})({c}) = {det}.",
        f"x = (({e})({d}) - ({b})({f}))/{det} = {e * d - b * f}/{det} = {x}.",
        f"y = (({a})({f}) - ({e})({c}))/{det} = {a * f - e * c}/{det} = {y}.",
        f"x + y = {x + y}.",
    ]
    _verify(a * x + b * y == e and c * x + d * y == f)
    return (
        q,
        steps,
        Fraction(x + y),
        {"solve": [f"{a}*x + ({b})*y - ({e})", f"{c}*x + ({d})*y - ({f})"], "vars": ["x", "y"], "target": "x + y"},
    )


def sequence(rng: random.Random, level: int, max_digits: int = 3):
    if level == 3:
        a, d, n = rng.randint(-10, 20), rng.randint(-5, 9), rng.randint(5, 30)
        ans = a + (n - 1) * d
        q = f"An arithmetic sequence starts {a}, {a + d}, {a + 2 * d}, ... What is its term number {n}?"
        steps = [f"The common difference is {d}.", f"Term {n} is {a} + ({n} - 1)({d}) = {ans}."]
        check = f"{a} + ({n} - 1)*({d})"
        _verify(ans - (n - 1) * d == a)
    elif level == 4:
        a, r, n = rng.randint(1, 5), rng.choice([2, 3, -2]), rng.randint(3, 8)
        ans = a * r ** (n - 1)
        q = f"A geometric sequence starts {a}, {a * r}, {a * r * r}, ... What is its term number {n}?"
        steps = [f"The common ratio is {r}.", f"Term {n} is {a} * ({r})^{n - 1} = {ans}."]
        check = f"{a}*({r})**({n} - 1)"
        _verify(Fraction(ans, a) == Fraction(r) ** (n - 1))
    else:
        a, d, n = rng.randint(-10, 20), rng.randint(1, 9), rng.randint(10, 60)
        last = a + (n - 1) * d
        ans = n * (a + last) // 2
        q = f"Find the sum of the first {n} terms of the arithmetic sequence {a}, {a + d}, {a + 2 * d}, ..."
        steps = [f"The last term is {a} + ({n} - 1)({d}) = {last}.", f"The sum is {n}({a} + {last})/2 = {ans}."]
        check = f"summation({a} + (k - 1)*({d}), (k, 1, {n}))"
        _verify(sum(a + k * d for k in range(n)) == ans)
    return q, steps, Fraction(ans), {"expr": check}


def counting(rng: random.Random, level: int, max_digits: int = 3):
    if level == 3:
        n = rng.randint(3, 7)
        ans = math.factorial(n)
        q = f"In how many different orders can {n} different books be arranged on a shelf?"
        steps = [f"There are {n} choices for the first place, {n - 1} for the next, and so on.", f"{n}! = {ans}."]
        check = f"factorial({n})"
    elif level == 4:
        n = rng.randint(5, 14)
        k = rng.randint(2, min(5, n - 1))
        ans = math.comb(n, k)
        q = f"How many ways are there to choose a committee of {k} people from {n} people?"
        steps = [f"Order does not matter, so count combinations: C({n}, {k}) = {n}!/({k}!({n - k})!) = {ans}."]
        check = f"binomial({n}, {k})"
    else:
        m, w = rng.randint(3, 8), rng.randint(3, 8)
        k = rng.randint(3, min(6, m + w - 1))
        ans = math.comb(m + w, k) - math.comb(m, k)
        q = f"A club has {m} boys and {w} girls. How many committees of {k} members include at least one girl?"
        steps = [
            f"All committees: C({m + w}, {k}) = {math.comb(m + w, k)}.",
            f"Committees with no girl: C({m}, {k}) = {math.comb(m, k)}.",
            f"At least one girl: {math.comb(m + w, k)} - {math.comb(m, k)} = {ans}.",
        ]
        check = f"binomial({m + w}, {k}) - binomial({m}, {k})"
    _verify(ans > 0)
    return q, steps, Fraction(ans), {"expr": check}


def probability(rng: random.Random, level: int, max_digits: int = 3):
    if level == 3:
        r, b = rng.randint(1, 12), rng.randint(1, 12)
        ans = Fraction(r, r + b)
        q = f"A bag holds {r} red and {b} blue marbles. One marble is drawn at random. What is the probability it is red?"
        steps = [f"There are {r + b} marbles and {r} are red.", f"The probability is {r}/{r + b} = {_plain(ans)}."]
        check: dict[str, Any] = {"expr": f"Rational({r}, {r + b})"}
    elif level == 4:
        r, b = rng.randint(2, 9), rng.randint(2, 9)
        ans = Fraction(math.comb(r, 2), math.comb(r + b, 2))
        q = (
            f"A bag holds {r} red and {b} blue marbles. Two marbles are drawn without replacement. "
            f"What is the probability that both are red?"
        )
        steps = [
            f"Pairs of red marbles: C({r}, 2) = {math.comb(r, 2)}. All pairs: C({r + b}, 2) = {math.comb(r + b, 2)}.",
            f"The probability is {math.comb(r, 2)}/{math.comb(r + b, 2)} = {_plain(ans)}.",
        ]
        check = {"expr": f"binomial({r}, 2)/binomial({r + b}, 2)"}
    else:
        dice, sides = 2, 6
        target = rng.randint(3, 11)
        ways = sum(1 for a, b in product(range(1, 7), repeat=2) if a + b == target)
        ans = Fraction(ways, sides**dice)
        q = f"We throw a pair of ordinary dice with faces 1 to 6. How likely is a total of {target}? Give a fraction."
        steps = [
            "There are 6 * 6 = 36 equally likely outcomes.",
            f"{ways} of them have sum {target}.",
            f"The probability is {ways}/36 = {_plain(ans)}.",
        ]
        check = {"dice": dice, "sides": sides, "sum": target}
    _verify(0 < ans <= 1)
    return q, steps, ans, check


def geometry(rng: random.Random, level: int, max_digits: int = 3):
    pi = False
    if level == 2:
        w, h = rng.randint(2, 30), rng.randint(2, 30)
        if rng.random() < 0.5:
            q, ans = f"A rectangle is {w} cm wide and {h} cm long. What is its area in square centimeters?", w * h
            steps, check = [f"Area = width * length = {w} * {h} = {ans}."], f"{w}*{h}"
        else:
            q, ans = f"A rectangle is {w} m wide and {h} m long. What is its perimeter in meters?", 2 * (w + h)
            steps, check = [f"Perimeter = 2 * ({w} + {h}) = 2 * {w + h} = {ans}."], f"2*({w} + {h})"
    elif level == 3:
        b, h = rng.randint(2, 30), rng.randint(2, 30)
        ans = Fraction(b * h, 2)
        q = f"A triangle has base {b} and height {h}. What is its area?"
        steps, check = [f"Area = base * height / 2 = {b} * {h} / 2 = {_plain(ans)}."], f"Rational({b}*{h}, 2)"
    elif level == 4:
        m, n = rng.randint(2, 6), rng.randint(1, 5)
        m, n = max(m, n + 1), min(n, m - 1)
        k = rng.randint(1, 3)
        a, b, c = k * (m * m - n * n), k * 2 * m * n, k * (m * m + n * n)
        ans = c
        q = f"A right triangle has legs of length {a} and {b}. How long is its hypotenuse?"
        steps = [
            f"By the Pythagorean theorem, c^2 = {a}^2 + {b}^2 = {a * a} + {b * b} = {a * a + b * b}.",
            f"c = sqrt({a * a + b * b}) = {c}.",
        ]
        check = f"sqrt({a}**2 + {b}**2)"
        _verify(c * c == a * a + b * b)
    else:
        r = rng.randint(2, 15)
        ans, pi = r * r, True
        q = f"A circle has diameter {2 * r}. What is its area? Express the answer in terms of pi."
        steps = [f"The radius is {2 * r} / 2 = {r}.", f"Area = pi r^2 = pi * {r}^2 = {r * r}pi."]
        check = f"pi*({2 * r}/2)**2"
    _verify(Fraction(ans) > 0)
    return q, steps, Fraction(ans), {"expr": check, "pi": pi}


def number_theory(rng: random.Random, level: int, max_digits: int = 3):
    kind = rng.randrange(3)
    if kind == 0:
        g = rng.randint(2, 15)
        a, b = g * rng.randint(2, 20), g * rng.randint(2, 20)
        ans = a * b // math.gcd(a, b)
        q = f"What is the least common multiple of {a} and {b}?"
        steps = [f"gcd({a}, {b}) = {math.gcd(a, b)}.", f"lcm = {a} * {b} / {math.gcd(a, b)} = {ans}."]
        check = f"ilcm({a}, {b})"
        _verify(ans % a == 0 and ans % b == 0)
    elif kind == 1:
        mod = rng.choice([7, 9, 10, 11, 13])
        base = rng.choice([b for b in range(2, 10) if math.gcd(b, mod) == 1])
        exp = rng.randint(5, 40)
        ans = pow(base, exp, mod)
        cyc, x = [], 1
        while True:
            x = x * base % mod
            if x in cyc:
                break
            cyc.append(x)
        k = (exp - 1) % len(cyc) + 1
        q = f"What is the remainder when {base}^{exp} is divided by {mod}?"
        steps = [
            f"The remainders of {base}^1, {base}^2, ... on division by {mod} are {', '.join(map(str, cyc))}, "
            f"then they repeat every {len(cyc)}.",
            f"{exp} = {len(cyc)} * {(exp - k) // len(cyc)} + {k}, so {base}^{exp} leaves the same remainder as "
            f"{base}^{k}, which is {cyc[k - 1]}.",
        ]
        check = f"Mod({base}**{exp}, {mod})"
        _verify(base**exp % mod == ans)
    else:
        n = rng.choice([2, 3, 5]) ** rng.randint(1, 4) * rng.choice([3, 5, 7, 11]) ** rng.randint(1, 3)
        fac: dict[int, int] = {}
        m, p = n, 2
        while m > 1:
            while m % p == 0:
                fac[p] = fac.get(p, 0) + 1
                m //= p
            p += 1
        ans = math.prod(e + 1 for e in fac.values())
        q = f"How many positive divisors does {n} have?"
        expo = " * ".join(f"{p}^{e}" for p, e in fac.items())
        steps = [f"{n} = {expo}.", f"The number of divisors is {' * '.join(str(e + 1) for e in fac.values())} = {ans}."]
        check = f"divisor_count({n})"
        _verify(math.prod(p**e for p, e in fac.items()) == n)
    return q, steps, Fraction(ans), {"expr": check}


Family = Callable[..., tuple[str, list[str], Fraction, dict[str, Any]]]
FAMILIES: dict[str, tuple[Family, tuple[int, ...]]] = {
    "add_digits": (add_digits, (1,)),
    "sub_digits": (sub_digits, (1,)),
    "mul_digit": (mul_digit, (1,)),
    "word_problem": (word_problem, (2,)),
    "fractions": (fractions, (2, 3)),
    "percent": (percent, (2,)),
    "ratio": (ratio, (2, 3)),
    "geometry": (geometry, (2, 3, 4, 5)),
    "linear_eq": (linear_eq, (3, 4)),
    "sequence": (sequence, (3, 4, 5)),
    "counting": (counting, (3, 4, 5)),
    "probability": (probability, (3, 4, 5)),
    "quadratic": (quadratic, (4, 5)),
    "system2": (system2, (4,)),
    "number_theory": (number_theory, (5,)),
}


def _levels(difficulty: int | str | list[int] | None, stage: str | None) -> tuple[int, ...]:
    if stage is not None and stage not in STAGE_LEVELS:
        raise ConfigError(f"stage = {stage!r}: allowed values are {', '.join(STAGES)}")
    if difficulty is None:
        return STAGE_LEVELS[stage] if stage else (1, 2, 3, 4, 5)
    if difficulty == "easy":
        difficulty = 1
    levels = (difficulty,) if isinstance(difficulty, int) else tuple(difficulty)
    if not levels or any(not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 5 for d in levels):
        raise ConfigError(f"difficulty = {difficulty!r}: allowed values are 1..5, 'easy', or a list of them")
    if stage is not None and not set(levels) <= set(STAGE_LEVELS[stage]):
        raise ConfigError(f"difficulty = {difficulty!r} is outside stage {stage!r} (levels {STAGE_LEVELS[stage]})")
    return levels


class Generator:
    """Draws problem i of a run from (seed, i) alone: pick a level, a family able to make it, build, verify."""

    def __init__(
        self,
        *,
        difficulty: int | str | list[int] | None = None,
        stage: str | None = None,
        families: list[str] | None = None,
        seed: int = 0,
        max_digits: int = 3,
        answer_template: str = DEFAULT_ANSWER_TEMPLATE,
    ) -> None:
        unknown = sorted(set(families or ()) - set(FAMILIES))
        if unknown:
            raise ConfigError(f"families: unknown {', '.join(unknown)}; allowed values are {', '.join(FAMILIES)}")
        if not 2 <= max_digits <= 6:
            raise ConfigError(f"max_digits = {max_digits!r}: allowed values are 2..6")
        if "{answer}" not in answer_template:
            raise ConfigError(f"answer_template = {answer_template!r} must contain '{{answer}}'")
        self.seed, self.max_digits, self.answer_template = seed, max_digits, answer_template
        levels = _levels(difficulty, stage)
        names = families or list(FAMILIES)
        self.choices = [(lv, [n for n in names if lv in FAMILIES[n][1]]) for lv in levels]
        self.choices = [(lv, fams) for lv, fams in self.choices if fams]
        if not self.choices:
            raise ConfigError(f"families {names} make no problems at difficulty {levels}; see FAMILIES for levels")
        self.rejected = 0

    def problem(self, index: int) -> Problem:
        """Problem number `index` of this run (deterministic)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        for _attempt in range(100):
            level, fams = self.choices[rng.randrange(len(self.choices))]
            name = fams[rng.randrange(len(fams))]
            try:
                q, steps, value, check = FAMILIES[name][0](rng, level, self.max_digits)
            except _Verify:
                self.rejected += 1
                continue
            answer = f"{fmt(value)}\\pi" if check.get("pi") else fmt(value)
            if check.get("pi") and value == 1:
                answer = "\\pi"
            solution = "\n".join([*steps, self.answer_template.format(answer=answer)])
            stage = "normal" if level <= 3 else "hard"
            return Problem(
                f"sym-{self.seed}-{index}", name, level, stage, EDUCATION[level], q, solution, answer, value, check
            )
        raise RuntimeError(f"symbolic generator failed to verify 100 drafts for item {index}")  # a bug, not input


def generate(
    n: int,
    *,
    difficulty: int | str | list[int] | None = None,
    stage: str | None = None,
    families: list[str] | None = None,
    seed: int = 0,
    start: int = 0,
    max_digits: int = 3,
    answer_template: str = DEFAULT_ANSWER_TEMPLATE,
) -> list[Problem]:
    """`n` verified problems (items start..start+n-1 of the run `seed`) at the given difficulty or stage."""
    gen = Generator(
        difficulty=difficulty,
        stage=stage,
        families=families,
        seed=seed,
        max_digits=max_digits,
        answer_template=answer_template,
    )
    return [gen.problem(i) for i in range(start, start + n)]


# --- compact column arithmetic: the tiny-model tier of the CPU demo -----------------------------------------
#
# Fixed-width operands and one fixed-length step per column, so every digit a step needs sits at the same
# distance from it in every problem of a tier: a small transformer trained from scratch learns to fetch it
# with position-relative attention instead of searching for it. A step is always 8 characters and true as
# written: "7+5+0=12" (column digits, carry in, two-digit sum), "7*6+4=46" (digit times the one-digit
# multiplier plus carry), "14-8-1=5" / "07-5-0=2" (top digit written with its borrow-out as the tens digit,
# minus bottom digit and borrow in). The answer line reads the written digits back, most significant first.


@dataclass(frozen=True)
class ArithTier:
    """One difficulty tier of `generate_arithmetic`: operand width (digits) and the operations drawn."""

    width: int
    ops: str  # any of "+-*"; "*" multiplies a width-digit number by a one-digit number 2..9
    difficulty: int


ARITH_TIERS: dict[str, ArithTier] = {
    "normal": ArithTier(width=3, ops="+-", difficulty=1),
    "hard": ArithTier(width=4, ops="+-", difficulty=2),
}
ARITH_FAMILIES = {"+": "compact_add", "-": "compact_sub", "*": "compact_mul"}


def compact_column(a: int, op: str, b: int, width: int) -> tuple[list[str], int]:
    """The fixed-length column steps for `a op b` (least significant column first) and the result."""
    steps, carry = [], 0
    result_digits = []
    for col in range(width):
        da = a // 10**col % 10
        if op == "+":
            db = b // 10**col % 10
            s = da + db + carry
            steps.append(f"{da}+{db}+{carry}={s:02d}")
            carry, digit = s // 10, s % 10
        elif op == "*":
            s = da * b + carry
            steps.append(f"{da}*{b}+{carry}={s:02d}")
            carry, digit = s // 10, s % 10
        else:
            db = b // 10**col % 10
            borrow = 1 if da - db - carry < 0 else 0
            digit = da + 10 * borrow - db - carry
            steps.append(f"{10 * borrow + da:02d}-{db}-{carry}={digit}")
            carry = borrow
        result_digits.append(digit)
    if op == "-" and carry:
        raise ValueError(f"{a} - {b} is negative; compact subtraction needs a >= b")
    value = int("".join(map(str, reversed(result_digits)))) + (carry * 10**width if op != "-" else 0)
    return steps, value


def compact_arith(rng: random.Random, tier: ArithTier) -> tuple[str, str, list[str], Fraction, dict[str, Any]]:
    """One fixed-width problem of `tier`: (family, question, steps, answer, check)."""
    op = tier.ops[rng.randrange(len(tier.ops))]
    lo, hi = 10 ** (tier.width - 1), 10**tier.width - 1
    a = rng.randint(lo, hi)
    b = rng.randint(2, 9) if op == "*" else rng.randint(lo, hi)
    if op == "-" and b > a:
        a, b = b, a
    steps, value = compact_column(a, op, b, tier.width)
    # Re-check by the inverse operation, a different path from the column construction.
    _verify((value - b == a) if op == "+" else (value + b == a) if op == "-" else (value % b == 0 and value // b == a))
    return ARITH_FAMILIES[op], f"What is {a} {op} {b}?", steps, Fraction(value), {"expr": f"{a} {op} {b}"}


def generate_arithmetic(
    n: int, *, stage: str = "normal", seed: int = 0, start: int = 0, answer_template: str = DEFAULT_ANSWER_TEMPLATE
) -> list[Problem]:
    """`n` compact column-arithmetic problems of tier `stage` (see ARITH_TIERS); item i depends on (seed, i).

    Made for training a tiny model from scratch on a CPU: 3-digit ("normal") and 4-digit ("hard") addition
    and subtraction, ~50 and ~60 tokens each. `compact_column` also writes multiplication by a digit."""
    if stage not in ARITH_TIERS:
        raise ConfigError(f"stage = {stage!r}: allowed values are {', '.join(ARITH_TIERS)}")
    if "{answer}" not in answer_template:
        raise ConfigError(f"answer_template = {answer_template!r} must contain '{{answer}}'")
    tier = ARITH_TIERS[stage]
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"arith-{stage}-{seed}-{i}")
        family, q, steps, value, check = compact_arith(rng, tier)
        answer = fmt(value)
        solution = "\n".join([*steps, answer_template.format(answer=answer)])
        out.append(
            Problem(
                f"arith-{stage}-{seed}-{i}",
                family,
                tier.difficulty,
                stage,
                "grade_school",
                q,
                solution,
                answer,
                value,
                check,
            )
        )
    return out


class ArithmeticGenerator:
    """`Generator`'s interface over `generate_arithmetic`: problem i of one compact column-arithmetic tier."""

    def __init__(self, stage: str, seed: int = 0, answer_template: str = DEFAULT_ANSWER_TEMPLATE) -> None:
        generate_arithmetic(0, stage=stage, seed=seed, answer_template=answer_template)  # validates the arguments
        self.stage, self.seed, self.answer_template = stage, seed, answer_template
        self.rejected = 0

    def problem(self, index: int) -> Problem:
        return generate_arithmetic(
            1, stage=self.stage, seed=self.seed, start=index, answer_template=self.answer_template
        )[0]


# --- the `symbolic` pipeline of `mathforge synth` -----------------------------------------------------------


@PIPELINES.register("symbolic")
class SymbolicPipeline:
    """Rows straight from the symbolic generator: item k is problem k of the run's seed."""

    name = "symbolic"
    sync = True

    def __init__(self, cfg: SynthConfig) -> None:
        sy, self.seed = cfg.symbolic, cfg.run.seed
        total, mix = cfg.run.items, sy.mix
        n_hard = round(total * mix.get("hard", 0) / sum(mix.values()))
        diff = sy.difficulty or None
        common = {
            "families": sy.families or None,
            "max_digits": sy.max_digits,
            "answer_template": sy.answer_template,
            "seed": self.seed,
        }
        if sy.arithmetic:  # one compact column-arithmetic tier; its problems carry the tier as their stage
            self.gens = {sy.arithmetic: ArithmeticGenerator(sy.arithmetic, self.seed, sy.answer_template)}
            self.counts = {sy.arithmetic: total}
        elif diff is not None:  # an explicit difficulty overrides the stage mix
            self.gens = {"normal": Generator(difficulty=diff, **common)}
            self.counts = {"normal": total}
        else:
            self.gens = {
                s: Generator(stage=s, **common) for s, c in (("normal", total - n_hard), ("hard", n_hard)) if c
            }
            self.counts = {"normal": total - n_hard, "hard": n_hard}
        self.info = {"items": self.counts}

    def items(self) -> list[dict[str, Any]]:
        return [
            {"id": f"sym-{self.seed}-{stage}-{k}", "stage": stage, "k": k}
            for stage, count in self.counts.items()
            if count
            for k in range(count)
        ]

    def process_sync(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        problem = self.gens[item["stage"]].problem(item["k"] if item["stage"] == "normal" else 10**9 + item["k"])
        row = problem.row(self.seed)
        row["meta"]["id"] = item["id"]
        row["meta"]["check"] = json.dumps(row["meta"]["check"])
        return [row]
