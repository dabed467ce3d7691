"""The vendored data: byte-identical to the published files, and the derived MATH split."""

import gzip
import hashlib

import pytest

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
