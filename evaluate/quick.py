"""Fast exact-enough values of simple LaTeX answers, without sympy.

Most answers are numbers, fractions, surds, multiples of π or small polynomials. Parsing those
with a full LaTeX parser costs milliseconds; this module turns such a string into a Python
expression over a few whitelisted functions (a token rewrite, not a LaTeX grammar: anything it
does not know raises `Unsupported` and the caller falls back to latex2sympy), then evaluates it
with mpmath at 40 significant digits — at given points for the variables — with guards on
exponent and factorial sizes so `10^{10^{10^{10}}}` raises `TooLarge` instead of hanging.
"""

from __future__ import annotations

import ast
import functools
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction

import mpmath

_CTX = mpmath.mp.__class__()  # our own context: its precision is set once here and never changed
_CTX.dps = 40
MAX_EXPONENT = 10**12
MAX_FACTORIAL = 10**6
MIN_EXPONENT = 1e-30
MAX_LENGTH = 400


class Unsupported(ValueError):
    """The string is outside what this fast path understands; use the full parser."""


class TooLarge(ValueError):
    """The value is too large to compute safely (an exponent tower, a huge factorial)."""


_FUNCS1 = {
    "sin": _CTX.sin,
    "cos": _CTX.cos,
    "tan": _CTX.tan,
    "sec": _CTX.sec,
    "csc": _CTX.csc,
    "cot": _CTX.cot,
    "arcsin": _CTX.asin,
    "arccos": _CTX.acos,
    "arctan": _CTX.atan,
    "ln": _CTX.ln,
    "log": _CTX.log10,
    "exp": _CTX.exp,
    "sqrt": _CTX.sqrt,
    "abs": abs,
}
_MACRO_FUNCS = {f"\\{name}": name for name in _FUNCS1 if name not in ("sqrt", "abs")}
_TOKEN_RE = re.compile(
    r"\s+|(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+(?![a-zA-Z]))?|\.\d+)|(?P<macro>\\[a-zA-Z]+)|(?P<letter>[a-zA-Z])"
    r"|(?P<op>[-+*/^!(){}|_=\[\]])|(?P<bad>.)"
)
_GREEK = {
    "alpha",
    "beta",
    "gamma",
    "delta",
    "theta",
    "lambda",
    "mu",
    "sigma",
    "phi",
    "omega",
    "rho",
    "tau",
    "epsilon",
}
_OPERAND_END = {"num", "name", ")"}
_OPERAND_START = {"num", "name", "(", "func"}


@dataclass(frozen=True)
class Parsed:
    """A translated expression: its AST, the numbers it uses, its variables, and whether a decimal appeared."""

    tree: ast.Expression
    numbers: tuple[str, ...]
    variables: frozenset[str]
    decimal: bool
    sums: bool = False  # holds a \\sum or \\prod: evaluate at integer points
    indexed: bool = False  # holds a subscripted term (x_1, a_{n}): an unknown sequence


def _group(tokens: list[tuple[str, str]], i: int, parens: bool = False) -> tuple[list[tuple[str, str]], int]:
    """The argument starting at tokens[i]: a {…} (or, for functions, (…)) group or one token.

    Returns (inner tokens, next index)."""
    if i >= len(tokens):
        raise Unsupported("missing argument")
    kind, text = tokens[i]
    if text == "{" or (parens and text == "("):
        opener, closer = text, "}" if text == "{" else ")"
        depth = 0
        for j in range(i, len(tokens)):
            if tokens[j][1] == opener:
                depth += 1
            elif tokens[j][1] == closer:
                depth -= 1
                if depth == 0:
                    return tokens[i + 1 : j], j + 1
        raise Unsupported("unbalanced braces")
    if kind == "num" and len(text) > 1 and "." not in text:  # \frac12 means \frac{1}{2}
        tokens[i] = (kind, text[1:])
        return [(kind, text[0])], i
    return [tokens[i]], i + 1


def _lex(text: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        if kind == "bad":
            raise Unsupported(f"character {match.group()!r}")
        tokens.append((kind, match.group()))
    return tokens


def _letter(tokens: list[tuple[str, str]], i: int, out: list[tuple[str, str]], numbers: list[str]) -> int:
    """A variable (x), a constant (e, i) or a term of a sequence (x_1, a_{n-k-1}); three letters are a word."""
    text = tokens[i][1]
    if i + 2 < len(tokens) and tokens[i + 1][0] == "letter" and tokens[i + 2][0] == "letter":
        raise Unsupported("a word")
    if i + 1 < len(tokens) and tokens[i + 1][1] == "_":
        sub, i = _group(tokens, i + 2)
        if not sub:
            raise Unsupported("empty subscript")
        out.extend([("func", "_idx"), ("(", "("), ("op", f"'{text}',")])
        _translate(sub, out, numbers)
        out.append((")", ")"))
        return i
    out.append(("name", {"e": "E", "i": "I"}.get(text, f"v_{text}")))
    return i + 1


def _translate(tokens: list[tuple[str, str]], out: list[tuple[str, str]], numbers: list[str]) -> None:
    """Appends (kind, python_text) pieces for `tokens` to `out`."""
    i = 0
    abs_open = False
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "num":
            if text.endswith("."):
                text = text[:-1]
            numbers.append(text)
            out.append(("num", f"_n{len(numbers) - 1}"))
            i += 1
        elif kind == "letter":
            i = _letter(tokens, i, out, numbers)
        elif kind == "macro":
            i = _macro(tokens, i, out, numbers)
        elif text in "({":
            out.append(("(", "("))
            i += 1
        elif text in ")}":
            out.append((")", ")"))
            i += 1
        elif text == "|":
            out.append(("func", "abs") if not abs_open else (")", ")"))
            if not abs_open:
                out.append(("(", "("))
            abs_open = not abs_open
            i += 1
        elif text == "^":
            arg, i = _group(tokens, i + 1, parens=True)
            out.append(("op", "**"))
            out.append(("(", "("))
            _translate(arg, out, numbers)
            out.append((")", ")"))
        elif text == "!":
            _factorial(out)
            i += 1
        else:
            out.append(("op", text))
            i += 1
    if abs_open:
        raise Unsupported("unbalanced |")


def _function(tokens: list[tuple[str, str]], i: int, out: list[tuple[str, str]], numbers: list[str]) -> int:
    """\\sin x, \\cos(2x), \\tan\\frac{\\pi}{4}, \\sin^2 x (a power of the value), \\log_2 8 (a base)."""
    name, power, base = _MACRO_FUNCS[tokens[i][1]], None, None
    i += 1
    if i < len(tokens) and tokens[i][1] == "^":
        power, i = _group(tokens, i + 1)
        if [t for _, t in power] in (["-", "1"], ["-1"]):
            raise Unsupported("an inverse function written as a power")
    elif i < len(tokens) and tokens[i][1] == "_" and name == "log":
        base, i = _group(tokens, i + 1)
    if i < len(tokens) and tokens[i][0] == "macro" and tokens[i][1] not in _MACRO_FUNCS:
        arg: list[tuple[str, str]] = []
        inner: list[tuple[str, str]] = []
        i = _macro(tokens, i, inner, numbers)
    else:
        arg, i = _group(tokens, i, parens=True)
        inner = []
    out.extend([("(", "("), ("func", "ln" if base else name), ("(", "(")])
    if inner:
        out.extend(inner)
    else:
        _translate(arg, out, numbers)
    out.append((")", ")"))
    if base is not None:
        out.extend([("op", "/"), ("func", "ln"), ("(", "(")])
        _translate(base, out, numbers)
        out.append((")", ")"))
    out.append((")", ")"))
    if power is not None:
        out.extend([("op", "**"), ("(", "(")])
        _translate(power, out, numbers)
        out.append((")", ")"))
    return i


def _big_operator(tokens: list[tuple[str, str]], i: int, out: list[tuple[str, str]], numbers: list[str]) -> int:
    """`\\sum_{k=lo}^{hi} body` / `\\prod…`: the body runs to the next + or - outside brackets."""
    name = "_sum" if tokens[i][1] == "\\sum" else "_prod"
    if i + 2 >= len(tokens) or tokens[i + 1][1] != "_":
        raise Unsupported("sum without bounds")
    below, j = _group(tokens, i + 2)
    if j >= len(tokens) or tokens[j][1] != "^" or len(below) < 3 or below[0][0] != "letter" or below[1][1] != "=":
        raise Unsupported("sum bounds")
    above, j = _group(tokens, j + 1)
    depth, end = 0, j
    while end < len(tokens):
        text = tokens[end][1]
        depth += 1 if text in "({" else -1 if text in ")}" else 0
        if depth == 0 and text in "+-=" and end > j:
            break
        end += 1
    if end == j:
        raise Unsupported("sum without a body")
    out.extend([("func", name), ("(", "("), ("op", f"'{below[0][1]}',")])
    _translate(below[2:], out, numbers)
    out.append(("op", ","))
    _translate(above, out, numbers)
    out.append(("op", ","))
    _translate(tokens[j:end], out, numbers)
    out.append((")", ")"))
    return end


def _macro(tokens: list[tuple[str, str]], i: int, out: list[tuple[str, str]], numbers: list[str]) -> int:
    text = tokens[i][1]
    if text in ("\\sum", "\\prod"):
        return _big_operator(tokens, i, out, numbers)
    if text == "\\frac":
        num, i = _group(tokens, i + 1)
        den, i = _group(tokens, i)
        whole = None
        simple = len(num) == len(den) == 1 and num[0][0] == den[0][0] == "num"
        if simple and out and out[-1][0] == "num" and (len(out) < 2 or out[-2][1] in ("+", "-", "(")):
            whole = out.pop()  # 2\frac{1}{2} is two and a half
            out.extend([("(", "("), whole, ("op", "+")])
        out.append(("(", "("))
        _translate(num, out, numbers)
        out.append(("op", ")/("))
        _translate(den, out, numbers)
        out.append((")", ")"))
        if whole is not None:
            out.append((")", ")"))
        return i
    if text == "\\sqrt":
        if i + 1 < len(tokens) and tokens[i + 1][1] == "[":  # \\sqrt[n]{x} = x^(1/n)
            close = next((j for j in range(i + 2, len(tokens)) if tokens[j][1] == "]"), None)
            if close is None or close == i + 2:
                raise Unsupported("nth root")
            degree = tokens[i + 2 : close]
            arg, i = _group(tokens, close + 1)
            out.extend([("func", "root"), ("(", "(")])
            _translate(arg, out, numbers)
            out.append(("op", ","))
            _translate(degree, out, numbers)
            out.append((")", ")"))
            return i
        arg, i = _group(tokens, i + 1)
        out.append(("func", "sqrt"))
        out.append(("(", "("))
        _translate(arg, out, numbers)
        out.append((")", ")"))
        return i
    if text in ("\\binom", "\\dbinom", "\\tbinom"):
        top, i = _group(tokens, i + 1)
        bottom, i = _group(tokens, i)
        out.append(("func", "binom"))
        out.append(("(", "("))
        _translate(top, out, numbers)
        out.append(("op", ","))
        _translate(bottom, out, numbers)
        out.append((")", ")"))
        return i
    if text in _MACRO_FUNCS:
        return _function(tokens, i, out, numbers)
    simple = {
        "\\pi": ("name", "pi"),
        "\\cdot": ("op", "*"),
        "\\times": ("op", "*"),
        "\\div": ("op", "/"),
        "\\infty": ("name", "oo"),
    }
    if text in simple:
        out.append(simple[text])
        return i + 1
    if text[1:] in _GREEK:
        out.append(("name", f"v_{text[1:]}"))
        return i + 1
    raise Unsupported(f"macro {text}")


def _factorial(out: list[tuple[str, str]]) -> None:
    if not out:
        raise Unsupported("factorial of nothing")
    start = len(out) - 1
    if out[start][0] == ")":
        depth = 0
        while start >= 0:
            depth += {")": 1, "(": -1}.get(out[start][0], 0)
            if depth == 0:
                break
            start -= 1
        if start > 0 and out[start - 1][0] == "func":
            start -= 1
    elif out[start][0] not in ("num", "name"):
        raise Unsupported("factorial of an operator")
    operand = out[start:]
    del out[start:]
    out.extend([("func", "fact"), ("(", "(")] + operand + [(")", ")")])


SIDE_BY_SIDE = re.compile(r"(?<![\d_^.])\d+\s+\.?\d")  # "11 6/6", "4 4/9 2": not a product a reader would write


def parse(text: str) -> Parsed:
    """Translates a simple LaTeX expression (raises Unsupported otherwise); cached (a Parsed is never changed)."""
    found = _parse_cached(text)
    if isinstance(found, Unsupported):
        raise Unsupported(str(found))
    return found


@functools.lru_cache(maxsize=16384)
def _parse_cached(text: str) -> Parsed | Unsupported:
    try:
        return _parse(text)
    except Unsupported as error:
        return error
    except RecursionError:
        return Unsupported("nested too deeply")


def _parse(text: str) -> Parsed:
    if len(text) > MAX_LENGTH:
        raise Unsupported("too long")
    if SIDE_BY_SIDE.search(text):
        raise Unsupported("numbers side by side")
    tokens = _lex(text)
    if not tokens:
        raise Unsupported("empty")
    pieces: list[tuple[str, str]] = []
    numbers: list[str] = []
    _translate(tokens, pieces, numbers)
    code = []
    previous = None
    for kind, piece in pieces:
        if previous in _OPERAND_END and kind in _OPERAND_START:
            code.append("*")  # implicit multiplication: 2x, 3\sqrt{2}, (a)(b)
        code.append(piece)
        previous = kind
    source = " ".join(code)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise Unsupported("not an expression") from None
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id.startswith("v_")}
    bound = {
        f"v_{node.args[0].value}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("_sum", "_prod") and node.args
        if isinstance(node.args[0], ast.Constant)
    }
    decimal = any("." in n or "e" in n.lower() for n in numbers)
    return Parsed(tree, tuple(numbers), frozenset(names - bound), decimal, bool(bound), "_idx" in source)


def _power(base, exponent):
    if abs(exponent) > MAX_EXPONENT and abs(base) not in (0, 1):
        raise TooLarge("exponent")
    if 0 < abs(exponent) < MIN_EXPONENT and abs(base) not in (0, 1):
        raise TooLarge("exponent too small to tell the power from 1 at this precision")
    if _CTX.isinf(base) or _CTX.isinf(exponent):
        return base**exponent
    magnitude = abs(exponent) * (_CTX.log(abs(base), 2) if base != 0 else 0)
    if abs(magnitude) > MAX_EXPONENT:
        raise TooLarge("power")
    return _CTX.power(base, exponent)


def _fact(x):
    if abs(x) > MAX_FACTORIAL:
        raise TooLarge("factorial")
    return _CTX.factorial(x)


def _root(x, n):
    """The n-th root; the real one for a negative number and an odd integer n (\\sqrt[3]{-8} = -2)."""
    if _CTX.im(x) == 0 and x < 0 and _CTX.isint(n) and int(n) % 2 == 1:
        return -_power(-x, 1 / n)
    return _power(x, 1 / n)


def _binom(n, k):
    if abs(n) > MAX_FACTORIAL:
        raise TooLarge("binomial")
    return _CTX.binomial(n, k)


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: _power,
}
_FUNCS = {**_FUNCS1, "fact": _fact}
_CONSTANTS = {"pi": _CTX.pi, "E": _CTX.e, "I": _CTX.mpc(0, 1), "oo": _CTX.inf}


MAX_TERMS = 10_000


def _term(node, walk, point):
    """x_1, a_{n-k-1}: an unknown sequence, modelled as a fixed pseudo-random function of (name, index)."""
    name, index = node.args[0].value, walk(node.args[1])
    key = _CTX.nstr(index, 15) if not isinstance(index, mpmath.mpc) else str(index)
    return _CTX.mpf(random.Random(f"seq:{name}:{key}").uniform(0.6, 2.4))


def _big(node, walk, point):
    var, lo, hi = node.args[0].value, walk(node.args[1]), walk(node.args[2])
    if not (_CTX.isint(lo) and _CTX.isint(hi)):
        raise Unsupported("sum bounds are not integers")
    if hi - lo > MAX_TERMS:
        raise Unsupported("too many terms")
    total = _CTX.mpf(0 if node.func.id == "_sum" else 1)
    for k in range(int(lo), int(hi) + 1):
        point[f"v_{var}"] = _CTX.mpf(k)
        value = walk(node.args[3])
        total = total + value if node.func.id == "_sum" else total * value
    point.pop(f"v_{var}", None)
    return total


_SPECIAL = {"_idx": _term, "_sum": _big, "_prod": _big}


def evaluate(parsed: Parsed, point: dict[str, object] | None = None):
    """The value of `parsed` (an mpf or mpc) with variables taken from `point`."""
    numbers = [_CTX.mpf(n) for n in parsed.numbers]
    point = dict(point or {})

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name):
            if node.id.startswith("_n"):
                return numbers[int(node.id[2:])]
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            if node.id in point:
                return point[node.id]
            raise Unsupported(f"unbound {node.id}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SPECIAL:
            return _SPECIAL[node.func.id](node, walk, point)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            args = [walk(arg) for arg in node.args]
            if node.func.id == "binom" and len(args) == 2:
                return _binom(*args)
            if node.func.id == "root" and len(args) == 2:
                return _root(*args)
            if node.func.id in _FUNCS and len(args) == 1:
                return _FUNCS[node.func.id](args[0])
        raise Unsupported(f"node {type(node).__name__}")

    return walk(parsed.tree)


MAX_EXACT_BITS = 200_000


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_EXACT_BITS or value.denominator.bit_length() > MAX_EXACT_BITS:
        raise Unsupported("too large for exact arithmetic")
    return value


def _exact_div(left: Fraction, right: Fraction) -> Fraction:
    if right == 0:
        raise ZeroDivisionError("division by zero")
    return _check_size(left / right)


def _exact_pow(left: Fraction, right: Fraction) -> Fraction:
    if right.denominator != 1:
        raise Unsupported("not exact arithmetic")
    size = max(left.numerator.bit_length(), left.denominator.bit_length())
    if abs(right.numerator) * size > MAX_EXACT_BITS:
        raise Unsupported("power too large for exact arithmetic")
    if left == 0 and right < 0:
        raise ZeroDivisionError("zero to a negative power")
    return left**right.numerator


def _exact_fact(n: Fraction) -> Fraction:
    if n.denominator != 1 or n < 0 or n > 5000:
        raise Unsupported("factorial outside exact range")
    return Fraction(math.factorial(int(n)))


_EXACT_BINOPS = {
    ast.Add: lambda left, right: left + right,
    ast.Sub: lambda left, right: left - right,
    ast.Mult: lambda left, right: _check_size(left * right),
    ast.Div: _exact_div,
    ast.Pow: _exact_pow,
}


def exact(parsed: Parsed) -> Fraction:
    """The exact rational value of a variable-free expression of + - * /, integer powers and factorials.

    Raises Unsupported for anything else (irrational functions, π) or results past MAX_EXACT_BITS,
    so `3^{1000}+1` and `3^{1000}` differ although they agree to 40 digits."""

    def walk(node) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _EXACT_BINOPS:
            return _EXACT_BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name) and node.id.startswith("_n"):
            return Fraction(parsed.numbers[int(node.id[2:])])
        is_fact = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "fact"
        if is_fact and len(node.args) == 1:
            return _exact_fact(walk(node.args[0]))
        raise Unsupported("not exact arithmetic")

    return walk(parsed.tree)


def points(variables: frozenset[str] | set[str], count: int = 4, integers: bool = False) -> list[dict[str, object]]:
    """Deterministic test points: variable values from a per-name seed (the last point negative); with
    `integers` (sums and products), small positive integers instead."""
    out = []
    for k in range(count):
        point = {}
        if integers:
            out.append({name: _CTX.mpf(2 + k * 2 + j) for j, name in enumerate(sorted(variables))})
            continue
        for name in sorted(variables):
            value = random.Random(f"{name}:{k}").uniform(0.6, 2.4)
            point[name] = _CTX.mpf(-value if k == count - 1 else value)
        out.append(point)
    return out


def close(a, b, rel: float) -> bool:
    """|a - b| <= rel * max(|a|, |b|) (and both infinite with the same sign counts as equal)."""
    if _CTX.isinf(a) or _CTX.isinf(b):
        return a == b
    if _CTX.isnan(a) or _CTX.isnan(b):
        return False
    return abs(a - b) <= rel * max(abs(a), abs(b))


def mpf(value) -> object:
    return _CTX.mpf(value)


def is_real(value) -> bool:
    return _CTX.im(value) == 0
