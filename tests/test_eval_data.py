"""Benchmarks, prompts and metrics: gold extraction, field mapping, pass@k, maj@k, breakdowns."""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb

import pytest

from mathforge.errors import ConfigError, DataError
from mathforge.evaluate.benchmarks import load_benchmark
from mathforge.evaluate.metrics import breakdown, majority, pass_at_k, summarize
from mathforge.prompts import PROMPT_DIR, available, load_prompt


def test_builtin_benchmarks_and_golds():
    gsm = load_benchmark("gsm8k")
    assert len(gsm.items) == 1319 and gsm.items[0].gold == "18"
    assert all("," not in item.gold for item in gsm.items)
    m500 = load_benchmark("math500", limit=3)
    assert len(m500.items) == 3 and m500.items[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert m500.items[0].meta == {"subject": "Precalculus", "level": 2}
    math = load_benchmark("math")
    assert len(math.items) + len(math.skipped) == 5000 and not math.skipped
    assert {item.meta["level"] for item in math.items} == {1, 2, 3, 4, 5}


def test_jsonl_with_field_mapping_counts_skipped_rows(tmp_path):
    path = tmp_path / "heldout.jsonl"
    rows = [
        {"prompt": "What is 2+3?", "response": "2+3=5. The answer is $\\boxed{5}$."},
        {"prompt": "Half of 9?", "response": "4.5"},
        {"prompt": "", "response": "1"},
        {"prompt": "No answer here"},
        {"prompt": "GSM style", "response": "3*4 = 12\n#### 12"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    bench = load_benchmark(str(path), fields={"question": "prompt", "answer": "response"})
    assert [i.gold for i in bench.items] == ["5", "4.5", "12"]
    assert len(bench.skipped) == 2 and f"{path}:3" in bench.skipped[0] and f"{path}:4" in bench.skipped[1]
    with pytest.raises(DataError, match="unknown field mapping"):
        load_benchmark(str(path), fields={"questoin": "prompt"})
    path.write_text('{"prompt": "x"\n')
    with pytest.raises(DataError, match=r"heldout.jsonl:1"):
        load_benchmark(str(path))


def test_prompts_render_chat_and_raw():
    assert set(available()) >= {"qwen-boxed", "alpaca-cot", "jiuzhang", "minerva", "gsm8k-8shot"}
    minerva = load_prompt("minerva")
    raw = minerva.render("What is 1+1?")
    assert raw.count("Problem:\n") == 5 and raw.endswith("Problem:\nWhat is 1+1?\n\nSolution:")
    assert raw.count("I hope it is correct.") == 4
    messages = minerva.render("What is 1+1?", chat=True)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4 + ["user"]
    assert len(load_prompt("gsm8k-8shot").shots) == 8
    qwen = load_prompt("qwen-boxed").render("Q?")
    assert qwen[0]["role"] == "system" and "\\boxed{}" in qwen[0]["content"] and qwen[1]["content"] == "Q?"
    with pytest.raises(ConfigError, match=r"unknown prompt 'nope'; known: alpaca-cot, chatml, .*qwen-boxed"):
        load_prompt("nope")


def test_prompt_files_refuse_unknown_keys_and_load_by_path(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text(
        'template = "Q: {question}\\nA:"\nresponse_prefix = " "\nstop = "Q:"\n'
        '[[shots]]\nquestion = "1+1?"\nanswer = " 2"\n'
    )
    prompt = load_prompt(str(good))
    assert prompt.name == "mine" and prompt.response_prefix == " " and prompt.stop == ["Q:"]
    assert prompt.render("2+2?") == "Q: 1+1?\nA: 2\n\nQ: 2+2?\nA:"
    typo = tmp_path / "typo.toml"
    typo.write_text('template = "{question}"\nrespons_prefix = " "\n')
    with pytest.raises(ConfigError, match=r"typo.toml: unknown key 'respons_prefix'; allowed: template, system, shots"):
        load_prompt(str(typo))
    typo.write_text('template = "{question}"\n[[shots]]\nquestion = "q"\nanswr = "a"\n')
    with pytest.raises(ConfigError, match=r"shots\[0\]: unknown key 'answr'; allowed: question, answer"):
        load_prompt(str(typo))
    typo.write_text('template = "{question}"\nchat = "yes"\n')
    with pytest.raises(ConfigError, match=r"typo.toml.chat: expected true or false"):
        load_prompt(str(typo))
    typo.write_text('system = "no template"\n')
    with pytest.raises(ConfigError, match="'template' must exist and contain"):
        load_prompt(str(typo))
    with pytest.raises(ConfigError, match="no such config file"):
        load_prompt(str(tmp_path / "missing.toml"))
    assert sorted(p.stem for p in PROMPT_DIR.glob("*.toml")) == available()


def test_training_config_does_not_import_evaluation():
    code = "import mathforge.trainer.config, sys; print([m for m in sys.modules if m.startswith('mathforge.evaluate')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (5, 0, 2), (5, 5, 3), (20, 7, 10)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_majority_groups_equivalent_answers():
    from mathforge.evaluate import grade

    answers = ["0.5", r"\frac{1}{2}", "3", None, "3", "1/2"]
    assert majority(answers, grade) == 0  # three ways of writing one half beat two 3s
    assert majority([None, None], grade) is None
    assert majority(["1", "2"], grade) == 0  # tie: first seen


def test_summarize_and_breakdown():
    records = [
        {"correct": {"lenient": [True, False], "strict": [False, False]}, "maj_correct": True, "meta": {"level": 1}},
        {"correct": {"lenient": [False, False], "strict": [False, False]}, "maj_correct": False, "meta": {"level": 2}},
    ]
    s = summarize(records, 2)
    assert s["accuracy_lenient"] == 0.25 and s["accuracy_strict"] == 0
    assert s["pass@1"] == 0.25 and s["pass@2"] == 0.5 and s["maj@2"] == 0.5
    assert breakdown(records, "level", 2)["1"]["accuracy_lenient"] == 0.5


def test_hf_dataset_from_a_local_folder(tmp_path):
    rows = [
        {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$."},
        {"problem": "Half of 8?", "solution": "#### 4"},
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = load_benchmark(f"hf:{tmp_path}", "test", fields={"question": "problem", "answer": "solution"})
    assert [(item.question, item.gold) for item in bench.items] == [("What is $1+1$?", "2"), ("Half of 8?", "4")]
    with pytest.raises(DataError, match="cannot load"):
        load_benchmark(f"hf:{tmp_path / 'missing'}", "test")


def test_importing_evaluate_is_cheap_and_keeps_its_names():
    code = (
        "import sys, mathforge.evaluate as e\n"
        "print(sorted(m for m in ('torch', 'openai', 'transformers', 'mathforge.evaluate.runner',"
        " 'mathforge.evaluate.backends') if m in sys.modules))\n"
        "from mathforge.evaluate import extract_answer, grade, run_eval\n"
        "import mathforge.evaluate.grade\n"
        "from mathforge.evaluate import grade as again\n"
        "print(grade('0.5', '1/2'), again is grade, extract_answer('so \\\\boxed{7}'), run_eval.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "True True 7 mathforge.evaluate.runner"]


def _eval_command_config(monkeypatch, argv):
    """The EvalConfig `mathforge eval argv` would run with (the run itself is replaced)."""
    from mathforge.cli import main
    from mathforge.evaluate import runner

    seen = {}

    def fake_run_eval(config, notify=None):
        seen["config"] = config
        return {"sandbox": None, "benchmarks": {}}

    monkeypatch.setattr(runner, "run_eval", fake_run_eval)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *argv])
    assert exit_info.value.code == 0
    config = seen["config"]
    # without --out the command picks a new run folder, runs/eval/<model>-<UTC time> (tests/test_cli_eval.py)
    assert config.out.startswith("runs/eval/")
    config.out = None
    return config


def test_eval_settings_merge_file_then_set_then_flags(tmp_path, monkeypatch):
    from mathforge.evaluate.config import EvalConfig

    path = tmp_path / "eval.toml"
    path.write_text(
        'api = "http://localhost:8000/v1"\nserved_model = "qwen"\nbench = ["gsm8k", "math500"]\n'
        'prompt = "qwen-boxed"\nn = 4\ntemperature = 0.7\nlimit = 10\n[fields]\nquestion = "problem"\n'
    )
    argv = [
        "--config",
        str(path),
        "--set",
        "n=8",
        "--set",
        "fields.answer=solution",
        "--set",
        "limit=50",
        "--limit",
        "5",
        "--bench",
        "math,gsm8k",
        "--raw",
    ]
    config = _eval_command_config(monkeypatch, argv)
    assert config == EvalConfig(
        api="http://localhost:8000/v1",
        served_model="qwen",
        bench=["math", "gsm8k"],
        prompt="qwen-boxed",
        n=8,
        temperature=0.7,
        limit=5,
        chat=False,
        fields={"question": "problem", "answer": "solution"},
    )
    # no file: the defaults, a flag and the dataclass agree
    assert _eval_command_config(monkeypatch, ["--model", "ckpt", "--seed", "3"]) == EvalConfig(model="ckpt", seed=3)


def test_eval_settings_are_refused_naming_the_key(tmp_path, capsys):
    from mathforge.cli import main
    from mathforge.evaluate import run_eval
    from mathforge.evaluate.config import eval_config, load_eval_config

    path = tmp_path / "eval.toml"
    path.write_text("temprature = 0.5\n")
    with pytest.raises(ConfigError, match=r"eval.toml: eval: unknown key 'temprature'; allowed: model, api, .*, out"):
        load_eval_config(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--config", str(path)])
    assert exit_info.value.code == 2 and "unknown key 'temprature'" in capsys.readouterr().err
    cases = [
        ({"n": 0}, r"eval.n must be >= 1, got 0"),
        ({"temperature": -1.0}, r"eval.temperature must be >= 0"),
        ({"n": 2}, r"eval.temperature must be > 0 when n > 1"),
        ({"limit": 0}, r"eval.limit must be >= 1 when given, got 0"),
        ({"max_new_tokens": 0}, r"eval.max_new_tokens must be >= 1"),
        ({"batch_size": 0}, r"eval.batch_size must be >= 1"),
        ({"concurrency": 0}, r"eval.concurrency must be >= 1"),
        ({"bench": " , "}, r"eval.bench is empty"),
        ({"n": "4"}, r"eval.n: expected an integer, got '4'"),
        ({"prompt": "minerv"}, r"eval.prompt: unknown prompt 'minerv'; known: alpaca-cot"),
        ({"engine": "vllm"}, r"eval.engine: 'vllm' is not allowed; allowed values: auto, mathforge, transformers"),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError, match=message):
            eval_config(raw)
    with pytest.raises(ConfigError, match=r"run_eval: unknown key 'temp'; allowed: model, api"):
        run_eval(model="ckpt", temp=0.5)
    with pytest.raises(ConfigError, match=r"run_eval.n must be >= 1"):
        run_eval(model="ckpt", n=0)
