"""The vendored data (byte-identical to the published files, the derived MATH split) and `mathforge.datasources`:
the GSM8K/MATH conventions checked on that data, and the one reader of JSONL/JSON/Parquet/folders."""

import gzip
import hashlib
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mathforge.datasources import gsm8k_gold, last_boxed, parse_level, read_rows, text_field
from mathforge.errors import DataError
from mathforge.evaluate import datasets

SHA256 = {  # from the data's README / NOTICE
    ("gsm8k", "train"): "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    ("gsm8k", "test"): "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    ("math500", "test"): "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    ("math", "test"): "3371949f33dd702d04b43fddd7d53a028de0aaca0e76abb1b875a050297b3aa4",
}
ROWS = {
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
    ("math500", "test"): 500,
    ("math", "test"): 5000,
    ("math", "train"): 4500,
}


@pytest.mark.parametrize("name, split", sorted(SHA256))
def test_files_are_byte_identical(name, split):
    data = gzip.decompress(datasets.path(name, split).read_bytes())
    assert hashlib.sha256(data).hexdigest() == SHA256[(name, split)]


@pytest.mark.parametrize("name, split", sorted(ROWS))
def test_row_counts(name, split):
    assert len(datasets.load(name, split)) == ROWS[(name, split)]


def test_fields():
    gsm = datasets.load("gsm8k", "test")[0]
    assert gsm["answer"].rsplit("#### ", 1)[1] == "18"
    m500 = datasets.load("math500", "test")[0]
    assert set(m500) == {"problem", "solution", "answer", "subject", "level", "unique_id"}
    assert datasets.load("math", "test")[0]["idx"] == 0


def test_math_train_is_math_test_minus_math500():
    held_out = {row["problem"] for row in datasets.load("math500", "test")}
    train = datasets.load("math", "train")
    assert not held_out & {row["problem"] for row in train}
    all_problems = [row["problem"] for row in datasets.load("math", "test")]
    assert len(train) + len(held_out) == len(all_problems)


def test_rows_are_fresh_copies():
    datasets.load("gsm8k", "test")[0]["question"] = "changed"
    assert datasets.load("gsm8k", "test")[0]["question"] != "changed"


def test_unknown_names_list_what_exists():
    with pytest.raises(DataError, match="available: gsm8k, math, math500"):
        datasets.load("svamp", "test")
    with pytest.raises(DataError, match="has no split 'validation'; available: test, train"):
        datasets.load("gsm8k", "validation")


# ---------------------------------------------------------------- mathforge.datasources on the vendored data


def test_conventions_on_the_vendored_sets():
    math = datasets.problems("math", "train")
    assert len(math) == 4500 and all(p.answer is not None for p in math)
    assert Counter(p.level for p in math) == {5: 1190, 4: 1086, 3: 1026, 2: 804, 1: 394}
    assert (math[0].id, math[0].answer, math[0].level, math[0].subject) == ("0", "2", 3, "Algebra")
    gsm = datasets.problems("gsm8k", "train")
    assert len(gsm) == 7473 and gsm[0].answer == "72" and gsm[0].question.startswith("Natalia sold clips")
    raw = [r["answer"].rsplit("####", 1)[1] for r in datasets.load("gsm8k", "train")]
    assert sum("," in a for a in raw) == 79 and not any("," in p.answer for p in gsm)  # "1,000" -> "1000"
    m500 = datasets.problems("math500", "test")[0]
    assert (m500.id, m500.answer, m500.level, m500.subject) == (
        "test/precalculus/807.json",
        r"\left( 3, \frac{\pi}{2} \right)",
        2,
        "Precalculus",
    )


def test_math_gold_is_the_last_box_with_nested_braces():
    solutions = {row["problem"]: row["solution"] for row in datasets.load("math", "test")}
    m500 = datasets.load("math500", "test")
    assert all(last_boxed(solutions[r["problem"]]) == r["answer"] for r in m500)  # MATH-500's answers, all 500
    assert last_boxed(r"so $\boxed{\frac{1}{2}}$ and not \{ \boxed{\{1, \{2\}\}}") == r"\{1, \{2\}\}"
    assert last_boxed(r"\boxed 5.") == "5" and last_boxed(r"\boxed{unclosed") is None


def test_helpers():
    assert gsm8k_gold("3 + 4 = 7 apples\n#### 1,234") == "1234"
    assert [parse_level(v) for v in ("Level 3", "Level 10", "2", 4, "Level ?", None, True)] == [
        3,
        10,
        2,
        4,
        None,
        None,
        None,
    ]


def test_read_rows_formats_and_where(tmp_path):
    rows = [{"q": "a"}, {"q": "b"}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d" / "y.json").write_text(json.dumps(rows))
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "z.json").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d" / "w.parquet")
    got = [(r.where.replace(str(tmp_path), ""), r.key, r.value["q"]) for r in read_rows(tmp_path / "d")]
    assert got == [
        ("/d/sub/z.json:1", "z-1", "a"),
        ("/d/sub/z.json:3", "z-3", "b"),
        ("/d/w.parquet row 0", "w-0", "a"),
        ("/d/w.parquet row 1", "w-1", "b"),
        ("/d/x.jsonl:1", "x-1", "a"),
        ("/d/x.jsonl:2", "x-2", "b"),
        ("/d/y.json: item 0", "y-0", "a"),
        ("/d/y.json: item 1", "y-1", "b"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "a"}\n{"q": \n')
    with pytest.raises(DataError, match=rf"{bad}:2: not valid JSON"):
        list(read_rows(bad))
    with pytest.raises(DataError, match=rf"{tmp_path / 'd' / 'x.jsonl'}:2: no text under field 'text'"):
        [text_field(r, "text") if r.value["q"] == "b" else None for r in read_rows(tmp_path / "d" / "x.jsonl")]
    with pytest.raises(DataError, match="no such data file"):
        list(read_rows(tmp_path / "none.jsonl"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown data format"):
        list(read_rows(tmp_path / "notes.txt"))


def test_seed_files_use_the_same_reader_and_level_parsing(tmp_path):
    from mathforge.synth.seeds import load_seeds

    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"q": "What is 1+1?", "a": 2, "lvl": "Level 10"}) + "\n" + json.dumps({"q": "Hi?"}) + "\n"
    )
    seeds = load_seeds([str(path)], {"question": "q", "answer": "a", "level": "lvl"})
    assert [(s.id, s.answer, s.level, s.source) for s in seeds] == [
        ("mine-1", "2", 10, "mine"),
        ("mine-2", None, None, "mine"),
    ]
    math = load_seeds(["math"])
    assert len(math) == 4500 and math[0].id == "math-0" and math[0].level == 3 and math[0].answer == "2"
    with pytest.raises(DataError, match="neither 'gsm8k', 'math' nor"):
        load_seeds([str(tmp_path / "missing.jsonl")])
