"""String normalisation of answers: the lenient clean-up and the strict (MATH/MetaMath) one.

`clean(text)` drops what does not change an answer's value (delimiters, spacing macros,
\\left/\\right, units, degrees (radians inside a trigonometric function), dollar signs, thousands
separators, \\text wrappers, a doubling of every backslash) and reports whether a percent sign was present.
`strict_normalize(text)` re-implements the normalisation of the MATH benchmark's `is_equiv` (used unchanged by
MetaMath and Skywork-Math) so papers' numbers can be compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mathforge.evaluate.extract import match_braces

UNITS = (
    "square units|square feet|square inches|square meters|square centimeters|square yards|square miles|"
    "cubic units|cubic feet|cubic inches|cubic meters|cubic centimeters|sq units|sq ft|sq in|"
    "units|unit|centimeters|centimetres|centimeter|meters|metres|meter|kilometers|kilometer|millimeters|"
    "inches|inch|feet|foot|ft|yards|yard|miles|mile|mph|km|cm|mm|m|in|"
    "degrees|degree|radians|dollars|dollar|cents|cent|hours|hour|hrs|hr|minutes|minute|mins|min|"
    "seconds|second|sec|days|day|weeks|week|months|month|years|year|"
    "grams|gram|kilograms|kg|g|pounds|pound|lbs|lb|ounces|ounce|oz|liters|litres|liter|ml|gallons|gallon|"
    "people|persons|students|children|boxes|books|apples|pages|marbles|cookies|points|ways|times|percent"
)
_UNIT_TEXT_RE = re.compile(rf"^(?:\s*(?:{UNITS})\b\.?)+(?:\^\{{?[23]\}}?)?\s*$", re.IGNORECASE)
_TRAILING_UNIT_RE = re.compile(rf"(?<=[\d}}a-zA-Z)])\s*(?:{UNITS})(?:\^\{{?[23]\}}?|\^[23])?\s*$", re.IGNORECASE)
_UNIT_POWER_RE = re.compile(rf"\\(?:text|mbox|mathrm)\s*\{{\s*(?:{UNITS})\s*\}}\s*\^\s*\{{?[23]\}}?", re.IGNORECASE)
_WRAPPER_RE = re.compile(r"\\(?:textbf|textit|textrm|textnormal|text|mathrm|mathbf|mbox|operatorname)\s*\{")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_UNITS_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
_UNITS_WORDS += "sixteen seventeen eighteen nineteen".split()
_TENS_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORD_RE = re.compile(
    rf"(?:({'|'.join(_TENS_WORDS)})(?:[- ]({'|'.join(_UNITS_WORDS[1:10])}))?|({'|'.join(_UNITS_WORDS)}))",
    re.IGNORECASE,
)


def _number_words(s: str) -> str:
    """A whole answer written in words below 100 ("forty-two", "seven") as digits."""
    match = _NUMBER_WORD_RE.fullmatch(s.strip())
    if not match:
        return s
    tens, unit, small = (g.lower() if g else None for g in match.groups())
    if small is not None:
        return str(_UNITS_WORDS.index(small))
    return str(20 + 10 * _TENS_WORDS.index(tens) + (_UNITS_WORDS.index(unit) if unit else 0))


_MIXED_RE = re.compile(r"^([+-]?\d{1,3}(?:[ ,]\d{3})+|[+-]?\d+)\s+(\d+)/(\d+)$")  # 4 4/9, 1 000 4/9: mixed numbers


def _mixed(match: re.Match[str]) -> str:
    """`4 4/9` -> `(4+4/9)`; an improper part (`11 6/6`) is no mixed number and stays as written."""
    whole, num, den = match.groups()
    whole = re.sub(r"[ ,]", "", whole)
    if int(num) >= int(den) or int(den) == 0:
        return match.group()
    sign = "-" if whole.startswith("-") else "+"
    return f"({whole.lstrip('+')}{sign}{num}/{den})"


_SIMPLE_SUBS = [
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),  # markdown bold
    (re.compile(r"\*\*"), "^"),  # Python's power: 2**(1/4)
    (
        re.compile(r"\\\\(?=(?:le|ge|leq|geq|neq|frac|dfrac|left|right|sqrt|pi|in|cdot|times|infty|text)(?![a-zA-Z]))"),
        "\\\\",
    ),
    (re.compile(r"(?<=\d)(?:,\\!\s*|\{\s*,\s*\}|\\,)(?=\d{3}(?!\d))"), ""),
    (re.compile(r"_\{(\w)\}"), r"_\1"),  # 4210_{7} is 4210_7  # 10,\!080 and 10{,}080: thousands
    (re.compile(r">="), r"\\geq "),
    (re.compile(r"<="), r"\\leq "),
    (re.compile(r"(?<=\s)!="), r"\\neq "),  # not 5!=120
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
    (re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])\s*"), ""),
    (re.compile(r"\\[dtc]frac"), r"\\frac"),
    (re.compile(r"^(-?0),(?=\d{3}$)"), r"\1."),  # 0,111 has no thousands: a decimal comma
    (re.compile(r"\\(?:displaystyle|limits)"), ""),
    (re.compile(r"(?<!\\)\\(?:[!,;: ]|quad|qquad)"), " "),
    (re.compile(r"\\(?:le|leqslant|leqq)(?![a-zA-Z])|≤"), r"\\leq "),
    (re.compile(r"\\(?:ge|geqslant|geqq)(?![a-zA-Z])|≥"), r"\\geq "),
    (re.compile(r"\\(?:ne|neq)(?![a-zA-Z])|≠"), r"\\neq "),
    (re.compile(r"−|–"), "-"),
    (re.compile(r"×"), r"\\times "),
    (re.compile(r"π"), r"\\pi "),
    (re.compile(r"∞"), r"\\infty "),
    (re.compile(r"\\emptyset|\\varnothing|∅"), r"\\{\\}"),
    (re.compile(r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree)(?:\s*\\?[CF](?![a-zA-Z]))?"), ""),
    (re.compile(r"\\\$|\$"), ""),
    (re.compile(r"~"), " "),
    (re.compile(r"(?<=[\d}])\s*\\text(?:bf)?\{\s*[a-zA-Z]\s*\}\s*$"), ""),  # a one-letter unit at the end
]
_PERCENT_RE = re.compile(
    r"\\%|%|\\text\{\s*(?:percent|percentage|pct)\s*\}|(?<![a-zA-Z])(?:percentage|percent|pct)(?![a-zA-Z])"
)
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:(?:,|\{,\}|\\,| )\d{3})+(?:\.\d+)?")


@dataclass(frozen=True)
class Cleaned:
    text: str
    percent: bool
    unit_power: int = 0  # 2 for an area unit (cm^2, square feet), 3 for a volume unit, 0 when none is shown


# A unit with a power: in words (square feet, cubic inches), inside \text{} / \mbox{} / \mathrm{} (\text{ m}^2,
# \mathrm{m^2}), or bare when at least two letters long (cm^2, in^3, ft^2). A bare one-letter unit is left out:
# `m^3 - m^2` is an expression in m, not an area.
_MULTI_LETTER_UNITS = "|".join(u for u in UNITS.split("|") if len(u) > 1)
_POWER = r"\^\s*\{?([23])\}?"
_UNIT_POWER_SHOWN_RE = re.compile(
    rf"(?<![a-zA-Z])(square|sq|cubic)\s+(?:{UNITS})\b"
    rf"|\\(?:text|mbox|mathrm)\s*\{{\s*(?:{UNITS})\s*\}}\s*{_POWER}"
    rf"|\\(?:text|mbox|mathrm)\s*\{{\s*(?:{UNITS})\s*{_POWER}\s*\}}"
    rf"|(?<![a-zA-Z\\])(?:{_MULTI_LETTER_UNITS})\s*{_POWER}",
    re.IGNORECASE,
)


def unit_power(text: str) -> int:
    """The power of the last unit shown with a number: 2 (cm^2, \\text{ m}^2, square feet), 3 (cubic inches,
    in^3), else 0. Units are dropped before values are compared; this keeps an area from equalling a volume."""
    if not re.search(r"\d", text):
        return 0
    found = list(_UNIT_POWER_SHOWN_RE.finditer(text))
    if not found:
        return 0
    word, *powers = found[-1].groups()
    power = next((p for p in powers if p), None)
    return int(power) if power else (3 if word.lower() == "cubic" else 2)


def unwrap(text: str, pattern: re.Pattern[str], keep=lambda inner: inner) -> str:
    """Replaces each `\\macro{inner}` matched by `pattern` (which ends at the `{`) by keep(inner)."""
    for _ in range(50):  # bounded: nested wrappers are unwrapped from the outside in
        match = pattern.search(text)
        if not match:
            return text
        end = match_braces(text, match.end() - 1)
        if end is None:
            return text[: match.start()] + text[match.end() :]
        inner = text[match.end() : end - 1]
        text = text[: match.start()] + keep(inner) + text[end:]
    return text


_WORDS_RE = re.compile(r"\s*[a-zA-Z]{2,}[a-zA-Z .\-/]*(?:\^\{?[23]\}?)?\s*")
_CONNECTIVES = {"and", "or", ",and", ",or", "for", "to"}
_TRAILING_WORDS_RE = re.compile(r"^([^a-zA-Z\\]*\d[^a-zA-Z\\]*?)\s+([a-zA-Z]{2,}(?:[\s\-][a-zA-Z]+)*)\.?$")
_PLAIN_SQRT_RE = re.compile(r"(?<![\\a-zA-Z])sqrt\s*\(")
_PLAIN_PI_RE = re.compile(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])")


def _keep_text(inner: str) -> str:
    """A \\text{…} next to a value: units ("cm", " inches per second") go, connectives ("or") stay."""
    if _UNIT_TEXT_RE.match(inner):
        return " "
    if _WORDS_RE.fullmatch(inner) and inner.strip().lower() not in _CONNECTIVES:
        return " "
    return inner


def _plain_sqrt(s: str) -> str:
    """sqrt(3) -> \\sqrt{3} (balanced parentheses)."""
    for _ in range(20):
        match = _PLAIN_SQRT_RE.search(s)
        if not match:
            return s
        depth, end = 0, None
        for j in range(match.end() - 1, len(s)):
            depth += {"(": 1, ")": -1}.get(s[j], 0)
            if depth == 0:
                end = j
                break
        if end is None:
            return s
        s = s[: match.start()] + "\\sqrt{" + s[match.end() : end] + "}" + s[end + 1 :]
    return s


_DOUBLED_COMMAND_RE = re.compile(r"(?<!\\)\\\\[a-zA-Z]")  # \\frac: a command written with its backslash doubled
_SINGLE_COMMAND_RE = re.compile(r"(?<!\\)\\[a-zA-Z]")


def _undouble(s: str) -> str:
    """A text with every backslash doubled (`\\\\frac12`, rows split by four): written once more as LaTeX.

    Only when no command has a single backslash and every run of backslashes has an even length."""
    if not _DOUBLED_COMMAND_RE.search(s) or _SINGLE_COMMAND_RE.search(s):
        return s
    if any(len(run) % 2 for run in re.findall(r"\\+", s)):
        return s
    return re.sub(r"\\\\", lambda _: "\\", s)


_TRIG_RE = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![a-zA-Z])")
_DEGREES_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![a-zA-Z]))")


def _radians(s: str) -> str:
    """Degrees next to a trigonometric function are radians to it: `\\sin(90^\\circ - x)` is `\\sin(\\pi/2 - x)`."""
    return _DEGREES_RE.sub(r"(\1\\pi/180)", s) if _TRIG_RE.search(s) else s


def clean(text: str) -> Cleaned:
    """Lenient normalisation (see module docstring). Never raises on strings."""
    s = _radians(_undouble(text.strip()))
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)]
    s = unwrap(s, _BOXED_RE)
    s = s.replace("\n", " ")
    for pattern, replacement in _SIMPLE_SUBS:
        s = pattern.sub(replacement, s)
    percent = bool(_PERCENT_RE.search(s))
    power = unit_power(s)
    s = _PERCENT_RE.sub("", s)
    text_only = _WRAPPER_RE.match(s.strip()) is not None and match_braces(s.strip(), s.strip().find("{")) == len(
        s.strip()
    )
    s = _UNIT_POWER_RE.sub(" ", s)
    has_digit = re.search(r"\d", s) is not None
    s = unwrap(s, _WRAPPER_RE, (lambda inner: inner) if text_only or not has_digit else _keep_text)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"^(?:the answer is|answer:|answer is)\s*", "", s, flags=re.IGNORECASE)
    s = s.rstrip(".").strip() if not re.search(r"\d\.$", s) or s.endswith("..") else s.rstrip(".")
    if re.search(r"\d", s) and not re.fullmatch(r"[A-Za-z ]+", s):
        previous = None
        while previous != s:
            previous, s = s, _TRAILING_UNIT_RE.sub("", s).strip()
        trailing = _TRAILING_WORDS_RE.match(s)  # "5 inches per second": words after a number are units
        if trailing and not set(trailing.group(2).lower().split()) & _CONNECTIVES:
            s = trailing.group(1).strip()
    if "sqrt" in s:
        s = _plain_sqrt(s)
    s = _PLAIN_PI_RE.sub(r"\\pi ", s)
    s = re.sub(r",\s*(?:and|or)\s+", ", ", s)  # the Oxford comma: "a, b, and c"
    s = _MIXED_RE.sub(_mixed, s)
    s = _number_words(s)
    if _THOUSANDS_RE.fullmatch(s):
        s = re.sub(r"\{,\}|\\,|,| ", "", s)
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3})", "", s)
    return Cleaned(s.strip(), percent, power)


# --- strict mode: the MATH benchmark's string normalisation (Hendrycks et al. 2021) ------------


def _strict_fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            out += part
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _strict_fix_slash(s: str) -> str:
    if s.count("/") != 1:
        return s
    a, b = s.split("/")
    if re.fullmatch(r"-?\d+", a) and re.fullmatch(r"-?\d+", b):
        return "\\frac{" + a + "}{" + b + "}"
    return s


def _strict_fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def strict_normalize(text: str) -> str:
    """The MATH `strip_string` normalisation, step by step, in our own code."""
    s = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units written as "\text{ cm}" at the end
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _strict_fix_sqrt(s).replace(" ", "")
    s = _strict_fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _strict_fix_slash(s)
