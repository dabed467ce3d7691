"""A parsed answer: what was extracted from a response (or a gold answer), cleaned once and split into a
typed structure that `grade_parsed` compares part by part.

    parse_answer(r"The roots are $\\boxed{-2}$ and $\\boxed{1}$.", source="response")
    # Answer(kind='list', items=(Answer(kind='number', text='-2'), Answer(kind='number', text='1')), ...)

Kinds: ``number`` (a constant: 3, \\frac{1}{2}, 2\\sqrt{3}), ``expression`` (with variables: 2x+1),
``text`` (words), ``relation`` (x \\neq 3, -x > -1: terms in `items`, operators in `op`), ``equation``
(lhs = rhs, any left-hand side), ``interval`` and ``tuple`` (ordered, brackets in `op`), ``set`` and
``list`` (unordered; a bare "1, 2" or "1 or 2" is a list, and so is "{1, 2}": plain LaTeX braces only group),
``union``, ``matrix`` (rows of entries; a scalar in front multiplies every entry; matrices written with +, - or a
product between them are worked out entry by entry as text), ``none`` (nothing to grade).

Where the answer comes from (`source`):
- ``"answer"``: the text already is the answer;
- ``"response"``: a model response: the marked answer that starts last (`extract.marked_answer`), else, for a
  short text, the text itself (trailing "is 34" taken), else the last math span when the text ends with one,
  else the last number;
- ``"gold"``: GSM8K's ``#### x``, a boxed solution's box, a whole solution's final answer (read as a response),
  or the string itself.
Math spans joined only by "and", "or" or commas in a marked answer (`$12$ and $13$`) are one answer list.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from mathforge.evaluate import quick
from mathforge.evaluate.extract import check_box_rule, extract_answer, marked_answer, match_braces
from mathforge.evaluate.normalize import clean

KINDS = (
    "none",
    "number",
    "expression",
    "text",
    "relation",
    "equation",
    "interval",
    "tuple",
    "set",
    "list",
    "union",
    "matrix",
)
SOURCES = ("answer", "response", "gold")
MAX_INPUT = 5000
MAX_WHOLE = 300  # texts up to this long are kept whole: identical texts are equal whatever they hold
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|xi|rho|sigma|tau"
    "|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|Psi|Omega"
)
_FUNCTION_MACROS = (
    "sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|sinh|cosh|tanh|ln|log|exp|sqrt|frac|dfrac|tfrac|binom|sum|prod"
    "|int|lim|max|min|det|gcd|lcm|pi|infty|cdot|times|div|pm|mp|angle|overline|text|mathrm|begin|end|left|right"
)
# a name: x, x_1, a_{n+1}, \theta, f(x), g'(2), AB, \angle APC, \overline{AB}, m\angle A
_ONE_NAME = (
    rf"(?:(?:[a-zA-Z]|\\(?:{_GREEK})(?![a-zA-Z])|\\(?!(?:{_FUNCTION_MACROS})(?![a-zA-Z]))[a-zA-Z]+)'*(?:_\{{?[\w,+\- ]+\}}?)?(?:\^\{{?\*\}}?)?(?:\s*\([\w ,]+\))?"
    r"|[A-Z]{2,4}|(?:m\s*)?\\angle\s*\{?[A-Z]{1,3}\}?|\\overline\{[A-Z]{1,3}\}|\|[A-Z]{2}\||\\(?:arc|widehat)\{?[A-Z]{2,3}\}?)"
)
_NAME_RE = re.compile(rf"\s*(?:{_ONE_NAME}(?:\s*:\s*{_ONE_NAME})*|\(\s*{_ONE_NAME}(?:\s*,\s*{_ONE_NAME})*\s*\))\s*")
_MATRIX_RE = re.compile(
    r"^(.*?)[(\[]?\s*\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\2\}\s*[)\]]?$", re.DOTALL
)
_CASES_RE = re.compile(r"\\begin\{cases\}(.*)\\end\{cases\}", re.DOTALL)
_REL_RE = re.compile(r"\\leq|\\geq|\\neq|<|>|=")
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")  # English words, not \macros
_MATH_SPAN_RE = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL
)
_TRAILING_IS_RE = re.compile(
    r"(?:\bis|\bare|\bequals?|\bwas|(?<=\w)'s)\s*(\$[^$]+\$|[-+]?[\d.,/]*\d%?)(?:\s*[a-zA-Z]{1,3}[²³]?)?\s*[.!]?\s*$"
)
_FLIP = {"<": ">", ">": "<", "\\leq": "\\geq", "\\geq": "\\leq"}


@dataclass(frozen=True)
class Answer:
    """A typed answer (see module docstring). `raw` is the extracted string (top level only)."""

    kind: str
    text: str = ""
    items: tuple[Answer, ...] = ()
    op: str = ""
    percent: bool = False
    unit_power: int = field(default=0, compare=False)  # 2 area, 3 volume unit shown (normalize.unit_power)
    raw: str | None = field(default=None, compare=False)
    whole: str | None = field(default=None, compare=False)  # the text it came from, when short

    def show(self) -> str:
        """A compact one-line rendering: kind(content)."""
        if self.kind in ("number", "expression", "text"):
            body = self.text
        elif self.kind in ("equation", "relation"):
            ops = self.op.split() if self.kind == "relation" else ["="]
            body = self.items[0].show() + "".join(f" {o} {i.show()}" for o, i in zip(ops, self.items[1:]))
        else:
            body = (self.op + " " if self.op else "") + "; ".join(i.show() for i in self.items)
        return f"{self.kind}({body}){' %' if self.percent else ''}"


NONE = Answer("none")

_ERRORS = [0]
_ERRORS_LOCK = threading.Lock()


def count_error() -> None:
    """One more unexpected failure inside the grader (a bug to report, graded as "not equal")."""
    with _ERRORS_LOCK:
        _ERRORS[0] += 1


def grader_errors() -> int:
    """How many unexpected failures the grader met in this process so far (see `count_error`)."""
    return _ERRORS[0]


def is_name(text: str) -> bool:
    """True for what names a quantity rather than gives a value: x, a_1, f(2), (p, q), AB, \\angle APC, V_1:V_2."""
    return _NAME_RE.fullmatch(text) is not None and not re.fullmatch(r"\s*\\?(?:pi|e|i)\s*", text)


# --- where the answer is ------------------------------------------------------------------------------


def _last_math_span(text: str) -> tuple[int, int, str] | None:
    found = None
    for match in _MATH_SPAN_RE.finditer(text):
        inner = next(g for g in match.groups() if g is not None)
        found = (match.start(), match.end(), inner.strip())
    return found


_CJK_RE = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")
_NON_CJK_RUN_RE = re.compile(r"[^\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+")
_SENTENCE_RE = re.compile(r"[.!?]\s+[A-Z]")


def _is_prose(text: str) -> bool:
    """Words around the answer: more than three words, a sentence break, or CJK text."""
    outside = _MATH_SPAN_RE.sub(" ", text)
    return len(_WORD_RE.findall(outside)) > 3 or bool(_SENTENCE_RE.search(outside) or _CJK_RE.search(text))


def _cjk_answer(text: str) -> str | None:
    """In CJK prose, the last run of other characters holding a digit: "每份应该是 (\\frac{2}{5}) 吨。" -> (\\frac{2}{5})."""
    runs = [r.strip(" .,;:") for r in _NON_CJK_RUN_RE.findall(text) if re.search(r"\d", r)]
    if not runs:
        return None
    last = runs[-1]
    if "=" in last:
        last = last.rsplit("=", 1)[1].strip()
    return last or None


_CODE_RE = re.compile(r"__\w+__|\w\(\s*'|\['")  # __import__('os'), Path('x'), d['k']


def unmarked_answer(text: str, number: str = "last") -> str | None:
    """A response without a marked answer: a short answer itself, else what its end says (never code: a
    number inside `__import__('os')… or 0` is not an answer)."""
    text = text.strip()
    if _CODE_RE.search(text):
        return None
    if _CJK_RE.search(text) and "$" not in text:
        found = _cjk_answer(text)
        if found is not None:
            return found
    trailing = _TRAILING_IS_RE.search(text)
    if trailing and (len(text) <= 200 or "\n" not in text[trailing.start() - 1 :]):
        return trailing.group(1).strip().strip("$").strip()
    span = _last_math_span(text)
    outside = _MATH_SPAN_RE.sub(" ", text)
    if len(text) <= 120 and "\n" not in text and not _is_prose(text):
        if span is None or not re.search(r"[a-zA-Z]{2,}", outside):
            return text
    if span is not None and (len(text) <= 200 or re.fullmatch(r"[\s.!,;)]*", text[span[1] :])):
        if len(text) <= 200 or re.search(r"\\begin\{|[(\[]|\\\{", span[2]) or "=" not in span[2]:
            return span[2]
    if len(text) <= 120 and "\n" not in text and not re.search(r"\d", text):
        return text  # a short text answer of a few words: "Tuesday afternoon"
    if number == "first":  # a marked sentence: "Réponse: Janeth aura encore 220 $ à payer d'ici 12 mois."
        first = _NUMBER_RE.search(text)
        return first.group().rstrip(",.") if first else None
    return extract_answer(text, "last_number")


_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_SPECIAL_TOKEN_RE = re.compile(r"<\|[a-z_]+\|>(?:user|assistant|system)?|</?think>")


def answer_of(pred: str, boxes: str = "join") -> str | None:
    """The answer in a model response, or the response itself when it already is a short answer.

    A marked answer written as a sentence ("Final Answer: The largest $n$ is 34.") is read like an unmarked
    one (its trailing value, its math, or its last number)."""
    pred = _SPECIAL_TOKEN_RE.sub(" ", pred)
    marked = marked_answer(pred, boxes)
    if marked is None:
        return unmarked_answer(pred)
    if _is_prose(marked) or "$" in marked:
        return _joined_spans(marked) or unmarked_answer(marked, number="first")
    return marked


_QUOTES = "\\\"'“”"  # quotes, also escaped ones (\")
_QUOTES_RE = re.escape(_QUOTES)
_SPAN_GAP_RE = re.compile(rf"[\s{_QUOTES_RE}]*(?:,|\band\b|\bor\b|,\s*and\b|,\s*or\b)?[\s{_QUOTES_RE}]*")


def _joined_spans(text: str) -> str | None:
    """A marked answer made only of math spans joined by "and", "or" or commas (`$12$ and $13$`): "12, 13"."""
    spans = list(_MATH_SPAN_RE.finditer(text))
    if len(spans) < 2:
        return None
    gaps = [text[: spans[0].start()], *(text[a.end() : b.start()] for a, b in zip(spans, spans[1:]))]
    if not all(_SPAN_GAP_RE.fullmatch(gap) for gap in gaps) or not re.fullmatch(
        rf"[\s{_QUOTES_RE}.]*", text[spans[-1].end() :]
    ):
        return None
    if any(not _SPAN_GAP_RE.fullmatch(gap).group().strip(" " + _QUOTES) for gap in gaps[1:]):
        return None  # two spans side by side are one expression split in two, not a list
    return ", ".join(next(g for g in m.groups() if g is not None).strip() for m in spans)


def gold_of(gold: str, boxes: str = "join") -> str | None:
    """The gold answer: GSM8K's `#### x`, a boxed solution's box, or the string itself."""
    if "####" in gold or "\\boxed" in gold or "\\fbox" in gold:
        return marked_answer(gold, boxes)
    if len(gold) > 200 and _is_prose(gold):  # a whole solution: its marked (or last) answer, as in a response
        return answer_of(gold, boxes)
    return gold.strip() or None


# --- structure ------------------------------------------------------------------------------------------


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


def _enclosed(text: str, opener: str, closer: str) -> bool:
    """True when the bracket at text[0] closes at the last character (and nowhere before)."""
    if not (text.startswith(opener) and text.endswith(closer)):
        return False
    depth, i = 0, 0
    while i < len(text):
        if text.startswith("\\{", i) or text.startswith("\\}", i):
            if opener == "\\{":
                depth += 1 if text[i + 1] == "{" else -1
                if depth == 0 and i + 2 < len(text):
                    return False
            i += 2
            continue
        ch = text[i]
        if ch in "([{" and opener != "\\{":
            depth += 1
        elif ch in ")]}" and opener != "\\{":
            depth -= 1
            if depth == 0 and i < len(text) - 1:
                return False
        i += 1
    return depth == 0


def _scalar(text: str) -> Answer:
    if not text:
        return NONE
    try:
        parsed = quick.parse(text)
    except (quick.Unsupported, ValueError, RecursionError):
        kind = "text" if _WORD_RE.search(text) and "\\" not in text else "expression"
        if kind == "expression" and not re.search(r"[a-zA-Z]", text):
            kind = "number"
        return Answer(kind, text)
    return Answer("expression" if parsed.variables else "number", text)


def _items(texts: list[str]) -> tuple[Answer, ...]:
    """Items of a set or list; an item with ± stands for its two values."""
    out: list[Answer] = []
    for t in texts:
        parts = split_top(t, ("\\pm",)) if "\\pm" in t else [t]
        if len(parts) == 2 and parts[1]:
            a, b = parts
            out += [build(f"{a}+{b}" if a else b), build(f"{a}-{b}" if a else f"-{b}")]
        else:
            out.append(build(t))
    return tuple(out)


def _matrix(match: re.Match[str]) -> Answer:
    coefficient = match.group(1).strip().rstrip("\\cdot").strip()
    rows = [r for r in re.split(r"\\\\", match.group(3)) if r.strip()]
    cells = [[c.strip() for c in row.split("&")] for row in rows]
    if coefficient:
        cells = [[f"({coefficient})({c})" for c in row] for row in cells]
    return Answer("matrix", items=tuple(Answer("tuple", items=tuple(_scalar(c) for c in row)) for row in cells))


_ONE_MATRIX_RE = re.compile(r"\\begin\{([pbvBV]?matrix)\}(.*?)\\end\{\1\}", re.DOTALL)
_MAX_MATRICES = 6
_MATRIX_OP_RE = re.compile(r"\s*(\+|-|\\cdot|\\times|)\s*")


def _cells(body: str) -> list[list[str]]:
    rows = [r for r in re.split(r"\\\\", body) if r.strip()]
    return [[c.strip() for c in row.split("&")] for row in rows]


def _product(a: list[list[str]], b: list[list[str]]) -> list[list[str]] | None:
    if not a or not b or any(len(row) != len(b) for row in a) or any(len(row) != len(b[0]) for row in b):
        return None
    return [["+".join(f"({row[k]})({b[k][j]})" for k in range(len(b))) for j in range(len(b[0]))] for row in a]


def _sum(a: list[list[str]], b: list[list[str]], sign: str) -> list[list[str]] | None:
    if [len(row) for row in a] != [len(row) for row in b]:
        return None
    return [[f"({x}){sign}({y})" for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]


def _matrix_arithmetic(text: str) -> Answer | None:
    """Matrices written with +, - or a product between them (`A + B`, `A B`, `A \\cdot B`): the one matrix they
    give, entry by entry as text (None when `text` is not such a sum of products; text when the sizes clash)."""
    found = list(_ONE_MATRIX_RE.finditer(text))
    if len(found) > _MAX_MATRICES:  # a long product would write out exponentially long entries
        return Answer("text", text)
    if len(found) < 2 or found[0].start() != 0 or found[-1].end() != len(text):
        return None
    ops = [text[a.end() : b.start()] for a, b in zip(found, found[1:])]
    if not all(_MATRIX_OP_RE.fullmatch(op) for op in ops):
        return None
    terms: list[tuple[str, list[list[str]] | None]] = [("+", _cells(found[0].group(2)))]
    for op, match in zip(ops, found[1:]):
        op, cells = op.strip(), _cells(match.group(2))
        if op in ("+", "-"):
            terms.append((op, cells))
        else:
            sign, left = terms[-1]
            terms[-1] = (sign, _product(left, cells) if left is not None else None)
    total = terms[0][1]
    for sign, cells in terms[1:]:
        total = _sum(total, cells, sign) if total is not None and cells is not None else None
    if total is None or sum(len(c) for row in total for c in row) > MAX_INPUT:
        return Answer("text", text)
    return Answer("matrix", items=tuple(Answer("tuple", items=tuple(_scalar(c) for c in row)) for row in total))


def _bracketed(text: str) -> Answer | None:
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _enclosed(text, text[0], text[-1]):
        items = split_top(text[1:-1])
        if len(items) > 1:
            kind = "interval" if len(items) == 2 and text[0] + text[-1] != "()" else "tuple"
            return Answer(kind, items=tuple(build(p) for p in items), op=text[0] + text[-1])
    return None


def _sets(text: str) -> Answer | None:
    if _enclosed(text, "\\{", "\\}"):
        inner = text[2:-2].strip()
        return Answer("set", items=_items([p for p in split_top(inner) if p]) if inner else ())
    if text.startswith("{") and match_braces(text, 0) == len(text) and len(split_top(text[1:-1])) > 1:
        # {-2021, 2021}: LaTeX braces only group, so this shows as the bare list "-2021, 2021"
        return Answer("list", items=_items([p for p in split_top(text[1:-1]) if p]))
    return None


def _split_relations(text: str) -> tuple[list[str], list[str]]:
    """Terms and relation operators at the top level (not inside braces: \\sum_{k=0} is no equation)."""
    terms, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            match = _REL_RE.match(text, i)
            if match and not (ch == "\\" and text[i + 1 : i + 2] in "{}"):
                terms.append(text[start:i].strip())
                ops.append(match.group())
                start = i = match.end()
                continue
        i += 2 if ch == "\\" and text[i + 1 : i + 2] in "{}()[]" else 1
    terms.append(text[start:].strip())
    return terms, ops


def _relation(text: str) -> Answer | None:
    terms, ops = _split_relations(text)
    if not ops or not all(terms):
        return None
    if set(ops) == {"="}:
        return Answer("equation", items=(build(terms[0]), build(terms[-1])), op="=")
    if "=" in ops or ("\\neq" in ops and len(ops) > 1):
        return None
    interval = _inequality(terms, ops)
    if interval is not None:
        return interval
    return Answer("relation", items=tuple(_scalar(t) for t in terms), op=" ".join(ops))


def _inequality(terms: list[str], ops: list[str]) -> Answer | None:
    """`x < 3`, `3 \\geq x`, `-1 < x \\leq 2` → an interval over the named variable (text); None otherwise."""
    if "\\neq" in ops:
        return None
    if len(terms) == 2:
        var_first, var_last = is_name(terms[0]), is_name(terms[1])
        if var_first == var_last:
            return None
        op = ops[0] if var_first else _FLIP[ops[0]]
        var, bound = (terms[0], terms[1]) if var_first else (terms[1], terms[0])
        if op in ("<", "\\leq"):
            lo, hi, brackets = "-\\infty", bound, "(" + (")" if op == "<" else "]")
        else:
            lo, hi, brackets = bound, "\\infty", ("(" if op == ">" else "[") + ")"
        return Answer("interval", text=var.strip(), items=(build(lo), build(hi)), op=brackets)
    if len(terms) == 3 and is_name(terms[1]):
        if all(o in ("<", "\\leq") for o in ops):
            brackets = ("(" if ops[0] == "<" else "[") + (")" if ops[1] == "<" else "]")
            return Answer("interval", text=terms[1], items=(build(terms[0]), build(terms[2])), op=brackets)
        if all(o in (">", "\\geq") for o in ops):
            brackets = ("(" if ops[1] == ">" else "[") + (")" if ops[0] == ">" else "]")
            return Answer("interval", text=terms[1], items=(build(terms[2]), build(terms[0])), op=brackets)
    return None


def build(text: str, depth: int = 0) -> Answer:
    """The structure of a cleaned answer string."""
    text = text.strip()
    if depth > 20 or not text:
        return NONE if not text else Answer("text", text)
    into = re.match(r"^(.{1,40}?)\\in\s*", text)
    if into and is_name(into.group(1)):
        text = text[into.end() :]
    cases = _CASES_RE.fullmatch(text)
    if cases:  # a system: its equations, in any order
        rows = [r.strip() for r in re.split(r"\\\\", cases.group(1)) if r.strip()]
        return Answer("list", items=tuple(build(r, depth + 1) for r in rows)) if len(rows) > 1 else build(rows[0])
    if _enclosed(text, "(", ")") and len(split_top(text[1:-1])) == 1 and _REL_RE.search(text):
        return build(text[1:-1], depth + 1)  # (35 + 70 = 105)
    arithmetic = _matrix_arithmetic(text)
    if arithmetic is not None:
        return arithmetic
    matrix = _MATRIX_RE.match(text)
    if matrix and "\\begin" not in matrix.group(1):
        return _matrix(matrix)
    approx = split_top(text, ("\\approx",))
    if len(approx) == 2 and all(approx):  # x \approx 11 gives 11; \frac{\sqrt{3}}{3} \approx 0.577 its exact value
        return build(approx[1] if is_name(approx[0]) else approx[0], depth + 1)
    union = split_top(text, ("\\cup",))
    if len(union) > 1:
        return Answer("union", items=tuple(build(p, depth + 1) for p in union))
    found = _sets(text) or _bracketed(text)
    if found is not None:
        return found
    plus_minus = split_top(text, ("\\pm",))
    if len(plus_minus) == 2 and plus_minus[1]:
        return Answer("list", items=_items([text]))
    words = split_top(text, (" or ", " and ", ";"))
    items = [p for part in words for p in split_top(part, (",",))]
    if len(items) > 1 and all(items):
        return Answer("list", text=text, items=_items(items))
    if _REL_RE.search(text):
        found = _relation(text)
        if found is not None:
            return found
    return _scalar(text)


@lru_cache(maxsize=8192)
def _parse_cached(text: str, source: str, boxes: str) -> Answer:
    if source == "response":
        extracted = answer_of(text[-MAX_INPUT:], boxes)
    elif source == "gold":
        extracted = gold_of(text[:MAX_INPUT], boxes)
    else:
        extracted = text[:MAX_INPUT].strip() or None
    if extracted is None:
        return NONE
    cleaned = clean(extracted)
    if not cleaned.text:
        return Answer("none", raw=extracted)
    answer = build(cleaned.text)
    whole = re.sub(r"\s+", "", text) if len(text) <= MAX_WHOLE else None
    return Answer(
        answer.kind,
        answer.text,
        answer.items,
        answer.op,
        cleaned.percent,
        cleaned.unit_power,
        raw=extracted,
        whole=whole,
    )


def parse_answer(text: str | None, source: str = "answer", boxes: str = "join", raise_on_error: bool = False) -> Answer:
    """The typed answer in `text` (see module docstring); `Answer("none")` when there is none.

    An unknown `source` or box rule raises ConfigError. An unexpected failure while parsing is counted
    (`grader_errors`) and gives `Answer("none")`, or is raised with `raise_on_error`."""
    if source not in SOURCES:
        from mathforge.errors import ConfigError

        raise ConfigError(f"unknown answer source {source!r}; allowed: {', '.join(SOURCES)}")
    check_box_rule(boxes)
    if not isinstance(text, str):
        return NONE
    try:
        return _parse_cached(text, source, boxes)
    except Exception:
        if raise_on_error:
            raise
        count_error()
        return NONE
