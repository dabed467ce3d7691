"""Answer extraction: the final answer a model wrote, as a string (LaTeX kept), or None.

    extract_answer(r"... so the area is $\\boxed{\\frac{1}{2}}$.")   # -> "\\frac{1}{2}"

Styles, tried in this order by `style="auto"`:
- ``boxed``: the last ``\\boxed{…}`` / ``\\fbox{…}`` (nested braces matched; ``\\boxed 5`` too);
- ``minerva``: "Final Answer: The final answer is X. I hope it is correct.";
- ``gsm8k``: the text after the last ``####``;
- ``answer_is``: the last "The answer is X" / "answer: X";
- ``last_number``: the last number in the text (a last resort, never for a text without digits).
"""

from __future__ import annotations

import re

from mathforge.datasources import last_boxed, match_braces  # noqa: F401 (one implementation, re-exported)

STYLES = ("auto", "boxed", "minerva", "gsm8k", "answer_is", "last_number")

_MINERVA_RE = re.compile(r"final answer is\s*(.+?)\s*(?:\.\s*)?I hope", re.IGNORECASE | re.DOTALL)
_MINERVA_LOOSE_RE = re.compile(r"final answer(?: is)?\s*[:：]?\s*(.+)", re.IGNORECASE)
_ANSWER_IS_RE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*[:：])\s*[:：]?\s*(.+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _clean_tail(answer: str) -> str | None:
    answer = answer.strip()
    # an answer written inline ends at the sentence end: "42. So ..." or a line break
    answer = answer.split("\n", 1)[0].strip()
    if answer.startswith("$") and answer.count("$") >= 2:
        answer = answer[1 : answer.index("$", 1)]
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"(?<=\S)\.(\s.*)?$", "", answer) if not re.search(r"\d\.\d*$", answer) else answer
    answer = answer.rstrip(".").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    return answer or None


def _minerva(text: str) -> str | None:
    matches = _MINERVA_RE.findall(text)
    if matches:
        return _clean_tail(matches[-1].replace("\n", " "))
    loose = _MINERVA_LOOSE_RE.findall(text)
    return _clean_tail(loose[-1]) if loose else None


def _gsm8k(text: str) -> str | None:
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    answer = answer.replace(",", "").replace("$", "").strip().rstrip(".")
    return answer or None


def _answer_is(text: str) -> str | None:
    matches = _ANSWER_IS_RE.findall(text)
    if not matches:
        return None
    tail = matches[-1]
    boxed = last_boxed(tail)
    return boxed if boxed is not None else _clean_tail(tail)


def _last_number(text: str) -> str | None:
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    number = numbers[-1].rstrip(",")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", number):
        number = number.replace(",", "")
    return number or None


_BY_STYLE = {
    "boxed": last_boxed,
    "minerva": _minerva,
    "gsm8k": _gsm8k,
    "answer_is": _answer_is,
    "last_number": _last_number,
}


def extract_answer(text: str | None, style: str = "auto") -> str | None:
    """The final answer in `text` by `style` (see module docstring); None when there is none.

    Never raises on odd input: anything that is not a string gives None. An unknown style is a
    programming error and raises ConfigError.
    """
    if style not in STYLES:
        from mathforge.errors import ConfigError

        raise ConfigError(f"unknown extraction style {style!r}; allowed: {', '.join(STYLES)}")
    if not isinstance(text, str) or not text.strip():
        return None
    if style != "auto":
        return _BY_STYLE[style](text)
    for name in ("boxed", "minerva", "gsm8k", "answer_is", "last_number"):
        found = _BY_STYLE[name](text)
        if found is not None:
            return found
    return None


def explicit_answer(text: str) -> str | None:
    """An answer the text marks explicitly (boxed, Minerva, ####, "the answer is"); no last-number guess."""
    for name in ("boxed", "minerva", "gsm8k", "answer_is"):
        found = _BY_STYLE[name](text)
        if found is not None:
            return found
    return None
