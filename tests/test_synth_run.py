"""Runs, shards, resume and configs: symbolic runs end to end into files `datasets` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathforge.errors import ConfigError
from mathforge.synth import config, run
from mathforge.synth.store import Journal

CONFIGS = Path(__file__).resolve().parents[1] / "synth" / "configs"


def symbolic_cfg(out: Path, items: int = 300, **extra: str) -> config.SynthConfig:
    sets = [
        f'run.output="{out}"',
        f"run.items={items}",
        "run.progress=false",
        "quality.decontaminate=false",
        "quality.near_dedup=false",
        "quality.exact_dedup=false",
    ]
    return config.load(None, sets + [f"{k}={v}" for k, v in extra.items()])


def ids(out: Path) -> list[str]:
    rows = []
    for path in sorted((out / "data").rglob("*.jsonl")):
        rows += [json.loads(line)["meta"]["id"] for line in path.read_text().splitlines()]
    return rows


def test_symbolic_run_writes_stage_folders_datasets_can_read(tmp_path):
    from datasets import load_dataset

    cfg = symbolic_cfg(tmp_path / "a", 400, **{"symbolic.mix": "{normal = 3, hard = 1}", "run.format": '"parquet"'})
    manifest = run.synthesize(cfg)
    assert manifest["files"]["normal"]["rows"] == 300 and manifest["files"]["hard"]["rows"] == 100
    ds = load_dataset("parquet", data_files=str(tmp_path / "a" / "data" / "hard" / "*.parquet"), split="train")
    assert len(ds) == 100 and set(ds.column_names) == {"prompt", "response", "meta"}
    assert all(r["response"].endswith("The answer is: " + r["meta"]["answer"]) for r in ds)
    assert {r["meta"]["difficulty"] for r in ds} <= {4, 5}
    saved = json.loads((tmp_path / "a" / "manifest-00000-of-00001.json").read_text())
    assert saved["filters"]["generation"] == {"in": 400, "removed": 0, "kept": 400}


def test_shards_partition_the_items_and_merge_dedups_across_shards(tmp_path):
    whole = symbolic_cfg(tmp_path / "whole", 500, **{"symbolic.difficulty": "1"})
    run.synthesize(whole)
    parts = symbolic_cfg(tmp_path / "parts", 500, **{"symbolic.difficulty": "1", "quality.exact_dedup": "true"})
    for i in range(3):
        run.synthesize(parts, shard=(i, 3))
    shard_ids = ids(tmp_path / "parts")
    merged = run.merge(parts, 3)
    per_shard = [
        [json.loads(line)["id"] for line in (tmp_path / "parts" / "work" / f"journal-{i:05d}-of-00003.jsonl").open()]
        for i in range(3)
    ]
    assert sum(map(len, per_shard)) == len(set().union(*per_shard)) == 500  # disjoint
    assert set().union(*per_shard) == set(ids(tmp_path / "whole"))
    assert merged["filters"]["exact_dedup"]["in"] == 500
    assert merged["rows"] == 500 - merged["filters"]["exact_dedup"]["removed"] <= len(shard_ids)


def test_resume_after_a_torn_write_completes_exactly_the_missing_items(tmp_path):
    out = tmp_path / "r"
    cfg = symbolic_cfg(out, 200)
    run.synthesize(cfg)
    reference = sorted(ids(out))
    journal = out / "work" / "journal-00000-of-00001.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:120]) + lines[120][:37])  # a crash mid-line after 120 items
    with pytest.raises(ConfigError, match="--resume"):
        run.synthesize(cfg)
    manifest = run.synthesize(cfg, resume=True)
    assert manifest["generation"]["already_done"] == 120 and manifest["generation"]["torn_bytes"] == 37
    assert sorted(ids(out)) == reference
    recs = [json.loads(line)["id"] for line in journal.read_text().splitlines()]
    assert len(recs) == len(set(recs)) == 200


def test_resume_refuses_other_settings(tmp_path):
    run.synthesize(symbolic_cfg(tmp_path / "s", 50))
    with pytest.raises(ConfigError, match="other settings"):
        run.synthesize(symbolic_cfg(tmp_path / "s", 60), resume=True)


def test_journal_ignores_duplicate_appends(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.append({"id": "a", "rows": []})
    j.append({"id": "a", "rows": [1]})
    j.close()
    assert [r["id"] for r in Journal(tmp_path / "j.jsonl").records()] == ["a"]


@pytest.mark.parametrize(
    "sets, match",
    [
        (['run.format="csv"'], r"run.format: 'csv' is not allowed; allowed values: jsonl, parquet"),
        (["run.colour=1"], r"run: unknown key 'colour'; allowed: output, format, seed, items"),
        (['quality.self_consistency="3"'], r"quality.self_consistency: expected an integer, got '3'"),
        (["quality.self_consistency=-1"], r"quality.self_consistency must be >= 0"),
        (["quality.near_dedup_threshold=1.5"], r"quality.near_dedup_threshold must be in \(0, 1\]"),
        (["skywork.mix={normal = 1, easy = 1}"], r"skywork.mix must map normal/hard"),
        (['skywork.select_mix={gsm8k = "a"}'], r"skywork.select_mix must map seed sources to numbers >= 0"),
        (["skywork.solutions=0"], r"skywork.solutions must be >= 1"),
        (["jiuzhang.variants=[]"], r"jiuzhang.variants must be a non-empty subset of cot, tool"),
        (['backend.kind="openai"'], r"backend.kind = 'openai' does not fit pipeline.kind = 'symbolic'"),
        (["nosuch.key=1"], r"unknown section \[nosuch\]; allowed: run, pipeline, symbolic, backend"),
        (["justtext"], r"expected key=value"),
    ],
)
def test_config_errors_name_the_key_and_allowed_values(sets, match):
    with pytest.raises(ConfigError, match=match):
        config.load(None, sets)


@pytest.mark.parametrize(
    "sets, match",
    [
        (
            ['pipeline.kind="magic"'],
            r"pipeline.kind: unknown pipeline kind 'magic'; known: (?=.*jiuzhang)(?=.*skywork)(?=.*symbolic)",  # any order
        ),
        (
            ['skywork.methods=["rephrase", "magic"]'],
            r"skywork.methods\[1\]: unknown Skywork method 'magic'; known: "
            r"answer_aug, rephrase, fobar, self_verify, evol, teacher$",
        ),
        (
            ['skywork.evol_ops=["deepen", "shrink"]'],
            r"skywork.evol_ops\[1\]: unknown Evol operation 'shrink'; known: "
            r"rewrite, constraints, deepen, concretize, steps$",
        ),
        (
            ['jiuzhang.stages=["kindergarten"]'],
            r"jiuzhang.stages\[0\]: unknown education stage 'kindergarten'; known: "
            r"uniform \(all of them\), grade_school, middle_school, high_school, college, amc8, amc10, amc12, aime$",
        ),
        (
            ['jiuzhang.variants=["cot", "latex"]'],
            r"jiuzhang.variants\[1\]: unknown JiuZhang variant 'latex'; known: cot, tool$",
        ),
        (
            ['quality.decontamination_sets=["aime_test"]'],
            r"unknown decontamination set 'aime_test'; known: gsm8k_test, "
            r"math_test, math500_test$",
        ),
        (['symbolic.families=["calculus"]'], r"symbolic.families has unknown \['calculus'\]; allowed: add_digits"),
    ],
)
def test_unknown_registry_names_are_refused_at_load_listing_the_known(sets, match):
    with pytest.raises(ConfigError, match=match):
        config.load(None, sets)


def test_registries_hold_what_the_pipelines_dispatch_on():
    from mathforge.synth.common import PIPELINES
    from mathforge.synth.jiuzhang import EDUCATION_STAGES, VARIANTS
    from mathforge.synth.skywork import EVOL_OPS, SKYWORK_METHODS

    assert set(PIPELINES) == {"symbolic", "skywork", "jiuzhang"}
    assert SKYWORK_METHODS.names() == ["answer_aug", "rephrase", "fobar", "self_verify", "evol", "teacher"]
    assert EVOL_OPS.get("deepen") == "skywork/evol_deepen.txt"
    assert len(EDUCATION_STAGES) == 8 and EDUCATION_STAGES.get("aime").startswith("a contestant in the AIME")
    assert VARIANTS.get("tool").tool and not VARIANTS.get("cot").tool
    defaults = config.load(None)
    assert defaults.skywork.methods == SKYWORK_METHODS.names() and defaults.skywork.evol_ops == EVOL_OPS.names()


def test_set_reaches_any_depth_and_values_are_typed():
    cfg = config.load(
        None,
        ["skywork.seed_fields.question=problem", "sampling.temperature=1", "run.items=7", 'jiuzhang.stages="aime"'],
    )
    assert cfg.skywork.seed_fields == {"question": "problem"}
    assert cfg.sampling.temperature == 1.0 and isinstance(cfg.sampling.temperature, float)
    assert cfg.run.items == 7 and cfg.jiuzhang.stages == ["aime"]  # a single name is a list of one
    assert config.load(None).quality.near_dedup is True


def test_shipped_configs_load():
    for path in CONFIGS.glob("*.toml"):
        if path.name == "select.toml":  # `mathforge synth select`'s settings (test_synth_influence.py loads it)
            continue
        cfg = config.load(path)
        assert cfg.pipeline.kind in ("symbolic", "skywork", "jiuzhang")
    sky = config.load(CONFIGS / "skywork.toml")
    assert sky.skywork.select == 6000 and sky.skywork.mix == {"normal": 0.85, "hard": 0.15}
    assert sky.backend.max_retries == 8 and sky.sampling.max_tokens == 2048 and sky.run.format == "parquet"


def test_settings_hash_depends_on_content_settings_only():
    base = config.load(CONFIGS / "symbolic-demo.toml")
    same = config.load(
        CONFIGS / "symbolic-demo.toml",
        ['run.output="elsewhere"', "quality.near_dedup=true", "run.progress=false", "backend.concurrency=3"],
    )
    assert run.settings_hash(base) == run.settings_hash(same) == "9ae516cd2a3409fd"
    assert run.settings_hash(config.load(None, ["sampling.temperature=1"])) == run.settings_hash(
        config.load(None, ["sampling.temperature=1.0"])
    )
    for change in ["run.items=5", "run.seed=1", "symbolic.difficulty=2", 'backend.model="other"']:
        assert run.settings_hash(config.load(CONFIGS / "symbolic-demo.toml", [change])) != run.settings_hash(base)


def test_resume_accepts_a_run_whose_settings_json_an_older_version_wrote(tmp_path):
    cfg = symbolic_cfg(tmp_path / "o", 40)
    run.synthesize(cfg)
    settings = tmp_path / "o" / "settings.json"
    old = json.loads(settings.read_text())
    old["config"]["jiuzhang"]["stages"] = "uniform"  # how the old loader stored (and hashed) the default
    old["settings_hash"] = "0123456789abcdef"
    settings.write_text(json.dumps(old))
    manifest = run.synthesize(cfg, resume=True)
    assert manifest["generation"]["already_done"] == 40
    assert json.loads(settings.read_text())["settings_hash"] == run.settings_hash(cfg)


def test_cli_runs_and_reports_config_errors(tmp_path, capsys):
    from mathforge.cli import main

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(CONFIGS / "symbolic-demo.toml"), "--set", f'run.output="{out}"', "--set", "run.items=100"])
    assert exit_info.value.code == 0
    assert len(ids(out)) > 90
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(CONFIGS / "symbolic-demo.toml"), "--set", 'run.format="xml"'])
    assert exit_info.value.code == 2
    assert "run.format: 'xml' is not allowed; allowed values: jsonl, parquet" in capsys.readouterr().err


def test_arithmetic_tier_through_the_pipeline(tmp_path):
    from mathforge.synth import config as synth_config
    from mathforge.synth.run import synthesize

    cfg = synth_config.load(
        data={
            "run": {"output": str(tmp_path / "a"), "items": 60, "progress": False},
            "symbolic": {"arithmetic": "hard"},
            "quality": {"near_dedup": False},
        }
    )
    manifest = synthesize(cfg)
    rows = [json.loads(line) for line in open(manifest["files"]["hard"]["path"])]
    assert len(rows) == manifest["rows"] > 50 and all(r["meta"]["stage"] == "hard" for r in rows)
    for row in rows:
        a, op, b = row["prompt"].removeprefix("What is ").removesuffix("?").split()
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert row["response"].endswith(f"The answer is: {expected}") and row["meta"]["answer"] == str(expected)
    with pytest.raises(
        ConfigError, match="symbolic.arithmetic: 'medium' is not allowed; allowed values: , normal, hard"
    ):
        synth_config.load(data={"symbolic": {"arithmetic": "medium"}})


def test_a_skywork_method_is_one_registered_handler(tmp_path, monkeypatch):
    import asyncio

    from mathforge.synth import skywork
    from mathforge.synth.common import Context
    from mathforge.synth.prompts import Prompts

    async def echo(job: skywork.Job, ctx: Context) -> skywork.Draft:
        return skywork.Draft(
            f"Again: {job.seed.question}", f"Same.\nThe answer is: {job.seed.answer}", job.seed.answer, "none"
        )

    with pytest.raises(ConfigError, match="unknown Skywork method 'echo'"):
        config.load(None, ['skywork.methods=["echo"]'])
    monkeypatch.setitem(skywork.SKYWORK_METHODS._items, "echo", echo)  # what @SKYWORK_METHODS.register("echo") does
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n')
    cfg = config.load(
        None,
        [
            'pipeline.kind="skywork"',
            'backend.kind="openai"',
            'skywork.methods=["echo"]',
            f'skywork.seeds=["{seeds}"]',
            "run.items=2",
        ],
    )
    pipe = run.make_pipeline(cfg)
    items = pipe.items()
    assert [it["method"] for it in items] == ["echo", "echo"] and items[1]["pass"] == 1
    ctx = Context(None, Prompts(), cfg.sampling)
    [row] = asyncio.run(pipe.process(items[0], ctx))
    assert row["prompt"] == "Again: What is 2 + 3?" and row["response"] == "Same.\nThe answer is: 5"
    assert row["meta"]["method"] == "echo" and row["meta"]["sampling"] == {**cfg.to_dict()["sampling"], "n": 1}
