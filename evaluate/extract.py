"""Answer extraction: the final answer a model wrote, as a string (LaTeX kept), or None.

    extract_answer(r"... so the area is $\\boxed{\\frac{1}{2}}$.")   # -> "\\frac{1}{2}"

By position: every marked answer in the text is a candidate, and the one that starts last wins, whatever
its style (a `\\boxed{255}` early and "Final Answer: 10,455" at the end give 10,455). The styles:
- ``boxed``: ``\\boxed{…}`` / ``\\fbox{…}`` (nested braces matched; ``\\boxed 5`` too);
- ``minerva``: "Final Answer: The final answer is X. I hope it is correct." (and "final answer: X");
- ``gsm8k``: the text after ``####``;
- ``answer_is``: "The answer is X", "Answer: X", "Answer $X$" (and a few other languages: "答案是",
  "la respuesta es", "la réponse est", "die Antwort ist", "ответ:");
- ``last_number``: with no marked answer, the last number in the text (never for a text without digits).
`style="auto"` takes the last candidate of any marked style, then the last number; a named style takes
only that style's last candidate.

Several boxes (``\\boxed{-2} and \\boxed{1}``, as DeepSeek-R1 writes): with ``boxes="join"`` (the
default, as Math-Verify does) boxes separated only by commas, "and", "or", dollar signs or spaces form
one answer, written "-2, 1" (an unordered list); ``boxes="last"`` keeps only the last box.
"""

from __future__ import annotations

import re

from mathforge.datasources import BOX_RE, box_at, last_boxed, match_braces  # noqa: F401 (one implementation, re-exported)

STYLES = ("auto", "boxed", "minerva", "gsm8k", "answer_is", "last_number")
BOX_RULES = ("join", "last")
MARKED = ("boxed", "minerva", "gsm8k", "answer_is")

_BOX_GAP_RE = re.compile(
    r"(?:[\s$,;.]|\\(?:quad|qquad|[,;: !\[\]()])|\\text\{\s*(?:and|or|,)\s*\}|\band\b|\bor\b|\bthen\b)*", re.IGNORECASE
)
_MINERVA_RE = re.compile(r"final answer is\s*(.+?)\s*(?:\.\s*)?I hope", re.IGNORECASE | re.DOTALL)
_MINERVA_LOOSE_RE = re.compile(r"final answer(?: is)?\s*[:：]?\s*(.+)", re.IGNORECASE)
_ANSWER_IS_RE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+(?:is|=)|\banswer\s*[:：]|\banswer(?=\s*(?:\$|\\\[|\\\())|答案(?:是|为|[:：])"
    r"|\bla\s+respuesta\s+(?:es|[:：])|\b(?:la\s+)?réponse\s+(?:est|[:：])|\bréponse\s*[:：]|\bdie\s+antwort\s+(?:ist|[:：])|ответ\s*[:：])"
    r"\s*[:：]?\s*",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
MAX_MARKED_LENGTH = 200  # a non-box marked "answer" longer than this is prose, not an answer


def _clean_tail(answer: str) -> str | None:
    answer = answer.strip()
    # an answer written inline ends at the sentence end: "42. So ..." or a line break
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        close = re.compile(r"(?<!\\)" + re.escape(right)) if right == "$" else re.compile(re.escape(right))
        found = close.search(answer, len(left)) if answer.startswith(left) else None
        if found:
            return answer[len(left) : found.start()].strip() or None
    answer = answer.split("\n", 1)[0].strip()
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"(?<=\S)\.(\s.*)?$", "", answer) if not re.search(r"\d\.\d*$", answer) else answer
    answer = answer.rstrip(".").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    return answer or None


def all_boxes(text: str) -> list[tuple[int, int, str]]:
    """Every complete box in `text`: (start, end, content), in order (a box inside a box is skipped)."""
    found: list[tuple[int, int, str]] = []
    for match in BOX_RE.finditer(text):
        if found and match.start() < found[-1][1]:
            continue  # nested in the previous box
        box = box_at(text, match)
        if box is not None:
            found.append((match.start(), *box))
    return found


def _boxed(text: str, rule: str = "join") -> tuple[int, str] | None:
    found = all_boxes(text)
    if not found:
        return None
    start, _, content = found[-1]
    if rule == "last":
        return start, content
    parts = [content]
    for k in range(len(found) - 2, -1, -1):
        gap = text[found[k][1] : start]
        if not _BOX_GAP_RE.fullmatch(gap):
            break
        start = found[k][0]
        parts.insert(0, found[k][2])
    parts = [p for p in parts if p]
    return start, ", ".join(parts) if len(parts) > 1 else content


def _minerva(text: str) -> tuple[int, str] | None:
    matches = list(_MINERVA_RE.finditer(text))
    if matches:
        found = _clean_tail(matches[-1].group(1).replace("\n", " "))
        return (matches[-1].start(), found) if found else None
    loose = list(_MINERVA_LOOSE_RE.finditer(text))
    if not loose:
        return None
    found = _clean_tail(loose[-1].group(1))
    return (loose[-1].start(), found) if found else None


def _gsm8k(text: str) -> tuple[int, str] | None:
    if "####" not in text:
        return None
    start = text.rindex("####")
    answer = text[start + 4 :].strip().split("\n", 1)[0]
    answer = answer.replace(",", "").replace("$", "").strip().rstrip(".")
    return (start, answer) if answer else None


def _answer_is(text: str) -> tuple[int, str] | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end() : matches[-1].end() + 2 * MAX_MARKED_LENGTH]
    boxed = last_boxed(tail)
    found = boxed if boxed is not None else _clean_tail(tail)
    return (matches[-1].start(), found) if found else None


def _last_number(text: str) -> tuple[int, str] | None:
    numbers = list(_NUMBER_RE.finditer(text))
    if not numbers:
        return None
    number = numbers[-1].group().rstrip(",")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", number):
        number = number.replace(",", "")
    return (numbers[-1].start(), number) if number else None


def _candidate(text: str, style: str, rule: str) -> tuple[int, str] | None:
    if style == "boxed":
        return _boxed(text, rule)
    found = {"minerva": _minerva, "gsm8k": _gsm8k, "answer_is": _answer_is, "last_number": _last_number}[style](text)
    if found is not None and style != "last_number" and len(found[1]) > MAX_MARKED_LENGTH:
        return None
    return found


def check_box_rule(rule: str) -> None:
    if rule not in BOX_RULES:
        from mathforge.errors import ConfigError

        raise ConfigError(f"unknown box rule {rule!r}; allowed: {', '.join(BOX_RULES)}")


def marked_answer(text: str, boxes: str = "join") -> str | None:
    """The marked answer (boxed, Minerva, ####, "the answer is") that starts last; no last-number guess."""
    found = [c for c in (_candidate(text, s, boxes) for s in MARKED) if c is not None]
    return max(found, key=lambda c: c[0])[1] if found else None


explicit_answer = marked_answer  # the former name


def extract_answer(text: str | None, style: str = "auto", boxes: str = "join") -> str | None:
    """The final answer in `text` by `style` (see module docstring); None when there is none.

    Never raises on odd input: anything that is not a string gives None. An unknown style or box rule is
    a programming error and raises ConfigError.
    """
    if style not in STYLES:
        from mathforge.errors import ConfigError

        raise ConfigError(f"unknown extraction style {style!r}; allowed: {', '.join(STYLES)}")
    check_box_rule(boxes)
    if not isinstance(text, str) or not text.strip():
        return None
    if style != "auto":
        found = _candidate(text, style, boxes)
        return found[1] if found else None
    marked = marked_answer(text, boxes)
    if marked is not None:
        return marked
    found = _last_number(text)
    return found[1] if found else None
