"""The openai backend and the model-driven pipelines against a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fake_openai import LoopbackServer

from mathforge.backends import OpenAIBackend
from mathforge.synth import config, run
from mathforge.synth.seeds import load_seeds

FAULTS = {"429": 0.1, "500": 0.1, "timeout": 0.03, "malformed": 0.05}


def echo(messages, index):
    return f"echo[{index}]: {messages[-1]['content']}\nThe answer is: 1"


def test_backend_survives_faults_with_no_lost_or_duplicated_replies():
    async def go(urls):
        backend = OpenAIBackend(urls, "m", concurrency=32, timeout_s=0.4, backoff_s=0.01, max_retries=12)
        prompts = [f"question {i}" for i in range(240)]
        outs = await asyncio.gather(*(backend.chat([{"role": "user", "content": p}], n=2) for p in prompts))
        await backend.aclose()
        return prompts, outs, backend

    with (
        LoopbackServer(latency_s=0.002, faults=FAULTS, hang_s=1.0, responder=echo) as a,
        LoopbackServer(responder=echo, seed=1, faults=FAULTS, hang_s=1.0) as b,
    ):
        prompts, outs, backend = asyncio.run(go([a.url, b.url]))
        faults = a.counts + b.counts
    for p, out in zip(prompts, outs):
        assert out.texts == [f"echo[0]: {p}\nThe answer is: 1", f"echo[1]: {p}\nThe answer is: 1"]
    usage = backend.usage.as_dict()
    assert usage["completions"] == 480 and usage["failures"] == 0
    assert {"429", "500", "APITimeoutError", "malformed"} <= set(usage["retries"])
    assert sum(usage["retries"].values()) == usage["requests"] - 240
    assert faults["429"] == usage["retries"]["429"] and faults["500"] == usage["retries"]["500"]
    assert min(backend.per_url.values()) > 60  # both servers took a share
    assert usage["prompt_tokens"] == 240 * 2  # the loopback server counts words: "question i" is 2
    assert usage["completion_tokens"] == 240 * 2 * 7  # "echo[k]: question i / The answer is: 1" twice


def teacher_reply(messages, index):
    """A deterministic stand-in teacher in the layout the JiuZhang prompts ask for (Problem/Solution/answer)."""
    prompt = messages[-1]["content"]
    digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    answer = digest % 997
    source = re.findall(r"[A-Za-z][A-Za-z ,']{20,120}", prompt)
    topic = source[-1].strip() if source else "a quantity"
    if "```python" in prompt:
        solution = (
            f"Solution: Compute it with a short program.\n```python\nprint({digest % 89} * 11 + {answer - digest % 89 * 11})"
            f"\n```\nOutput: {answer}\nThe answer is: {answer}"
        )
    else:
        solution = (
            f"Solution: Let us reason step by step about {topic.lower()}.\n"
            f"Step 1: collect the given numbers ({digest % 89} and {digest % 53}).\n"
            f"Step 2: combine them to get {answer}.\nThe answer is: {answer}"
        )
    if "layout:\nProblem:" in prompt or 'starting "Problem:"' in prompt:
        return f"Problem: Variant {digest % 100003} about {topic}. What is the value asked for?\n{solution}"
    return solution


def texts_file(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "texts.jsonl"
    topics = [
        "the area of a circle is pi r squared",
        "an arithmetic series sums to n times the mean term",
        "the binomial coefficient counts subsets of a given size",
        "a prime has exactly two divisors",
        "the derivative of x to the n is n x to the n minus one",
    ]
    path.write_text("".join(json.dumps({"text": f"Lesson {i}: {topics[i % 5]}."}) + "\n" for i in range(n)))
    return path


def jiuzhang_cfg(tmp_path: Path, url: str, out: str, items: int = 60, **extra: str) -> config.SynthConfig:
    sets = [
        f'run.output="{tmp_path / out}"',
        f"run.items={items}",
        "run.progress=false",
        'pipeline.kind="jiuzhang"',
        'backend.kind="openai"',
        f'backend.base_urls=["{url}"]',
        "backend.concurrency=8",
        "backend.backoff_s=0.01",
        "backend.timeout_s=0.5",
        f'jiuzhang.texts=["{texts_file(tmp_path)}"]',
        "quality.decontamination_n=13",
    ]
    return config.load(None, sets + [f"{k}={v}" for k, v in extra.items()])


def rows_of(out: Path) -> dict[str, dict]:
    rows = {}
    for path in (out / "data").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["meta"]["id"] not in rows
            rows[row["meta"]["id"]] = row
    return rows


def test_jiuzhang_pipeline_cot_tool_and_distill_steps(tmp_path):
    with LoopbackServer(teacher_reply, faults=FAULTS, hang_s=1.0) as srv:
        m = run.synthesize(jiuzhang_cfg(tmp_path, srv.url, "syn"))
        d = run.synthesize(
            jiuzhang_cfg(
                tmp_path, srv.url, "dis", 20, **{"jiuzhang.step": '"distill"', "jiuzhang.stages": '["aime", "amc8"]'}
            )
        )
    rows = rows_of(tmp_path / "syn")
    assert m["generation"]["failed"] == 0 and m["filters"]["generation"]["in"] == 60
    assert len(rows) == m["rows"] > 0
    assert {r["meta"]["method"] for r in rows.values()} == {"cot", "tool"}
    assert len({r["meta"]["stage"] for r in rows.values()}) >= 5  # uniform over 8 stages
    for r in rows.values():
        assert r["prompt"].startswith("Variant ") and r["response"].endswith(f"The answer is: {r['meta']['answer']}")
        assert ("```python" in r["response"]) == (r["meta"]["method"] == "tool")
    distill = rows_of(tmp_path / "dis")
    assert {r["meta"]["stage"] for r in distill.values()} <= {"aime", "amc8"}
    for r in distill.values():
        assert "Text:\nLesson" in r["prompt"] and r["response"].startswith("Problem: Variant")
    assert d["usage"]["prompt_tokens"] > 0


def test_jiuzhang_executes_tool_solutions_and_rejects_the_wrong_and_the_hostile(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    programs = [  # (problem, code, what the solution says it printed, answer)
        ("How many ways can 7 people sit on 6 chairs in a row?", "print(6 * 7)", "Output: 42", "42"),
        ("What is the product of the first two even primes times seven?", "print(6 * 7)", "Output: 41", "41"),
        ("Divide one by nothing and report the quotient please.", "print(1 / 0)", "Output: 1", "1"),
        (
            "Count the letters in the word pwned then add zero.",
            f"open({str(canary)!r}, 'w').write('pwned')\nprint(5)",
            "Output: 5",
            "5",
        ),
        (
            "In how many orders can five distinct books be shelved?",
            "import sympy\nprint(sympy.factorial(5))",
            "```output\n120\n```",
            "120",
        ),
    ]

    def reply(messages, index):
        problem, code, stated, answer = programs[int(re.search(r"Lesson (\d+)", messages[-1]["content"]).group(1))]
        return f"Problem: {problem}\nSolution: Compute.\n```python\n{code}\n```\n{stated}\nThe answer is: {answer}"

    with LoopbackServer(responder=reply) as srv:
        m = run.synthesize(jiuzhang_cfg(tmp_path, srv.url, "tool", 5, **{"jiuzhang.variants": '["tool"]'}))
    rows = rows_of(tmp_path / "tool")
    assert sorted(r["meta"]["answer"] for r in rows.values()) == ["120", "42"]
    assert {r["meta"]["tool_output"] for r in rows.values()} == {"42", "120"}
    assert m["generation_rejections"] == {": tool output mismatch": 1, ": tool code fails": 2}
    assert canary.read_text() == "untouched"
    assert m["generation"]["sandbox"]["safe"] is True


def oracle(seeds):
    """A perfect teacher for the Skywork prompts: answers from the seeds' gold answers, fixed formats."""
    gold = {s.question: s.answer for s in seeds}

    def reply(messages, index):
        p = messages[-1]["content"]
        if 'starting "Problem:"' in p:  # an evolution round
            return f"Problem: A harder version number {len(p) % 97} of the example, with one more step?"
        if "Example problem:" in p:  # teacher
            return f"Problem: New teacher question {len(p)}?\nSolution: Worked.\nThe answer is: 7"
        if "Check the solution" in p:
            return "Solution: Checked and correct.\nThe answer is: 7"
        masked = re.search(r".*Problem: (.*?)\nAnswer: ", p, re.S) or re.match(r"(.*?)\nWe are told", p, re.S)
        if masked:  # FOBAR / self-verification: recover the masked number from the original seed
            pattern = re.escape(masked.group(1).strip()).replace("X", r"(\d+(?:\.\d+)?)", 1)
            for q in gold:
                m = re.fullmatch(pattern, q.strip())
                if m:
                    lead = (
                        f"Problem: Knowing the answer, find X in: {masked.group(1)}\nSolution: "
                        if "layout" in p
                        else ""
                    )
                    return f"{lead}Back-solve.\nThe answer is: {m.group(1)}"
        for q, a in gold.items():
            if q in p:
                if "layout:\nProblem:" in p:
                    return f"Problem: In other words: {q}\nSolution: As before.\nThe answer is: {a}"
                return f"Work.\nThe answer is: {a}"
        return "Steps.\nThe answer is: 11" if "Work out the math problem" in p else "I cannot help."

    return reply


def test_skywork_pipeline_all_methods_with_answer_checks(tmp_path):
    cfg = config.load(
        None,
        [
            f'run.output="{tmp_path / "sky"}"',
            "run.items=96",
            "run.progress=false",
            'pipeline.kind="skywork"',
            'backend.kind="openai"',
            "backend.concurrency=8",
            "skywork.select=8",
            'skywork.seeds=["gsm8k", "math"]',
            "skywork.allow_test_split=true",  # MATH test minus MATH-500: seeds by design here
            "quality.decontaminate=false",
            "quality.near_dedup=false",
            "skywork.mix={normal = 3, hard = 1}",
        ],
    )
    pipe = run.make_pipeline(cfg)
    seeds = pipe.pools["normal"] + pipe.pools["hard"]
    with LoopbackServer(responder=oracle(seeds)) as srv:
        cfg.backend.base_urls = [srv.url]
        m = run.synthesize(cfg)
    rows = rows_of(tmp_path / "sky")
    methods = {r["meta"]["method"] for r in rows.values()}
    assert methods == {"answer_aug", "rephrase", "fobar", "self_verify", "evol", "teacher"}
    assert {r["meta"]["stage"] for r in rows.values()} == {"normal", "hard"}
    gold = {s.id: s.answer for s in load_seeds(["gsm8k", "math"])}
    for r in rows.values():
        meta = r["meta"]
        if meta["method"] in ("answer_aug", "rephrase"):
            assert meta["answer"] == gold[meta["seed_id"]]
        if meta["method"] == "fobar":
            assert "X" in r["prompt"] and meta["answer"] == meta["masked"]
        if meta["method"] == "evol":
            assert len(meta["evol_ops"]) == 2
        if meta["stage"] == "hard":
            assert meta["difficulty"] in (4, 5)
    assert m["pipeline_info"]["items"] == {"normal": 72, "hard": 24}
    gen = m["filters"]["generation"]
    assert gen["in"] == 96 and gen["kept"] + sum(m["generation_rejections"].values()) == 96
    assert set(m["generation_rejections"]) <= {"fobar: no number to mask", "self_verify: no number to mask"}


def toml_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    with LoopbackServer(teacher_reply, latency_s=0.03, faults={"429": 0.05, "500": 0.05}) as srv:
        cfg = jiuzhang_cfg(tmp_path, srv.url, "killed", 240)
        toml = tmp_path / "kill.toml"
        toml.write_text(
            "\n".join(
                f"[{section}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
                for section, values in cfg.to_dict().items()
            )
        )
        journal = tmp_path / "killed" / "work" / "journal-00000-of-00001.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mathforge.synth", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.time() + 60
        while (
            time.time() < deadline
            and proc.poll() is None
            and (not journal.exists() or journal.read_bytes().count(b"\n") < 60)
        ):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_at_kill = journal.read_bytes().count(b"\n")
        assert 60 <= done_at_kill < 240, proc.stderr.read().decode()[-2000:]
        resumed = run.synthesize(config.load(toml), resume=True)
        clean = run.synthesize(jiuzhang_cfg(tmp_path, srv.url, "clean", 240))
    assert resumed["generation"]["already_done"] >= done_at_kill
    ids = [json.loads(line)["id"] for line in journal.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 240
    killed_rows, clean_rows = rows_of(tmp_path / "killed"), rows_of(tmp_path / "clean")
    assert killed_rows.keys() == clean_rows.keys()
    assert all(killed_rows[k]["prompt"] == clean_rows[k]["prompt"] for k in clean_rows)
    assert resumed["rows"] == clean["rows"]
