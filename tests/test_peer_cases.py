"""The ported peer grading cases (evaluate/cases/peers/): the data itself, not the grader."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from mathforge.errors import DataError
from mathforge.evaluate import peer_cases

README = peer_cases.FOLDER / "README.md"
ROW = re.compile(r"^\|\s*`(?P<stem>[a-z0-9_]+)`\s*\|.*\|\s*(?P<cases>\d+)\s*\|\s*(?P<conflicts>\d+)\s*\|\s*$")


def _readme_counts() -> dict[str, tuple[int, int]]:
    """(cases, conflicts) per source from the table of the README's "## Sources" section."""
    section = README.read_text(encoding="utf-8").split("\n## Sources\n", 1)[1].split("\n## ", 1)[0]
    counts = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            counts[match["stem"]] = (int(match["cases"]), int(match["conflicts"]))
    return counts


def test_every_source_file_loads_with_unique_ids():
    cases = peer_cases.load()
    assert len(peer_cases.SOURCES) >= 1
    assert len(cases) >= 100
    ids = Counter(case["id"] for case in cases)
    assert [i for i, n in ids.items() if n > 1] == []
    for case in cases:  # ids name their source file
        assert case["id"].rsplit("-", 1)[0] in peer_cases.SOURCES


def test_each_source_is_one_repo_with_licence_and_no_exact_duplicates():
    for stem in peer_cases.SOURCES:
        cases = peer_cases.load(stem)
        assert cases, stem
        assert all(case["id"].startswith(f"{stem}-") for case in cases)
        assert len({(case["pred"], case["gold"]) for case in cases}) == len(cases), stem
        licences = {case["source"]["licence"] for case in cases}
        assert licences <= {"MIT", "Apache-2.0", "BSD-3-Clause", "BSD-2-Clause"}, (stem, licences)


def test_conflicts_are_the_only_lines_where_we_overrule_the_peer():
    cases = peer_cases.load()
    overruled = [case["id"] for case in cases if case["equal"] != case["peer_equal"]]
    by_id = {case["id"]: case for case in cases}
    assert all(by_id[i].get("conflict") for i in overruled)
    # both verdicts occur: a suite of only "equal" cases could not catch a false positive
    assert {case["equal"] for case in cases} == {True, False}


def test_readme_counts_match_the_files():
    counts = _readme_counts()
    assert sorted(counts) == sorted(peer_cases.SOURCES)
    for stem in peer_cases.SOURCES:
        cases = peer_cases.load(stem)
        assert counts[stem] == (len(cases), sum(1 for case in cases if "conflict" in case)), stem


def test_a_bad_line_names_file_and_line(tmp_path, monkeypatch):
    good = peer_cases.load(peer_cases.SOURCES[0])[0]
    bad = dict(good, source=dict(good["source"], commit="abc"))
    folder = tmp_path / "peers"
    folder.mkdir()
    (folder / "x.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    monkeypatch.setattr(peer_cases, "FOLDER", folder)
    monkeypatch.setattr(peer_cases, "SOURCES", ("x",))
    with pytest.raises(DataError, match=r"x\.jsonl:2: source\.commit 'abc' is not 40 hex digits"):
        peer_cases.load("x")
    overruled = dict(good, equal=not good["peer_equal"])
    overruled.pop("conflict", None)
    (folder / "x.jsonl").write_text(json.dumps(overruled) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.jsonl:1: equal differs from peer_equal"):
        peer_cases.load("x")
    with pytest.raises(ValueError, match="unknown peer source 'nope'"):
        peer_cases.load("nope")
