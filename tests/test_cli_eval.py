"""`mathforge eval` as a first-time user runs it: `mathforge.cli.main([...])`, its exit code, its one-line
message, and what it left on disk. A tiny random model (`from_config("tiny")`) with a BPE tokenizer trained
here stands in for a checkpoint; generation is 2 problems x 2 tokens."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mathforge  # noqa: E402
from mathforge.cli import main  # noqa: E402
from mathforge.evaluate import runner  # noqa: E402

FAST = ["--limit", "2", "--max-new-tokens", "2", "--batch-size", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """runs/x/final-like folder: config.json + model.safetensors (our tiny preset) + tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mathforge.evaluate import datasets
    from mathforge.model import from_config

    rows = datasets.load("gsm8k", "train")[:200]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([r["question"] for r in rows], trainer)
    torch.manual_seed(0)
    model = from_config({"preset": "tiny", "vocab_size": bpe.get_vocab_size(), "eos_token_id": 0, "bos_token_id": 0})
    folder = tmp_path_factory.mktemp("run") / "tiny"
    model.save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>").save_pretrained(folder)
    return folder


def _copy(checkpoint: Path, where: Path) -> Path:
    folder = where / checkpoint.name
    shutil.copytree(checkpoint, folder)
    return folder


def _eval(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mathforge eval argv`."""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _error_line(err: str) -> str:
    """The one error line; there is exactly one and no traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _no_generation(monkeypatch) -> list[str]:
    """Records any backend the run makes (a refused run must make none: it fails before loading a model)."""
    made: list[str] = []
    real = runner.make_backend

    def recording(*args, **kwargs):
        made.append(str(args[0] if args else kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "make_backend", recording)
    return made


# ------------------------------------------------------------------ 1. results are saved, never overwritten


def test_eval_saves_to_a_new_run_folder_and_never_overwrites_without_force(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _eval(capsys, "--model", str(checkpoint), *FAST)
    assert code == 0, err
    (folder,) = (tmp_path / "runs" / "eval").iterdir()
    assert folder.name.startswith("tiny-") and folder.name.endswith("Z")
    assert f"saving results in runs/eval/{folder.name}/" in err
    results = json.loads((folder / "results.json").read_text())
    assert results["benchmarks"]["gsm8k"]["count"] == 2 and results["config"]["out"] == f"runs/eval/{folder.name}"
    assert len((folder / "samples-gsm8k.jsonl").read_text().splitlines()) == 2
    assert (folder / "results.md").read_text().startswith("| benchmark |")
    assert sorted(p.name for p in folder.iterdir()) == ["results.json", "results.md", "samples-gsm8k.jsonl"]

    # 6. what produced these numbers: versions, the checkout's git revision, the UTC date
    assert results["versions"]["mathforge"] == mathforge.__version__
    assert results["versions"]["torch"] == torch.__version__
    root = Path(mathforge.__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    assert results["git_revision"] == (head.stdout.strip() if (root / ".git").exists() else None)
    date = datetime.fromisoformat(results["date"])
    assert date.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - date) < timedelta(hours=1)

    # the same folder again: refused before any work, the first run's files untouched
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    made = _no_generation(monkeypatch)
    code, _, err = _eval(capsys, "--model", str(checkpoint), *FAST, "--out", str(folder))
    assert code == 2 and not made
    line = _error_line(err)
    assert f"cannot save results in {folder}" in line and "results.json" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    code, _, err = _eval(capsys, "--model", str(checkpoint), *FAST, "--out", str(folder), "--force")
    assert code == 0, err
    again = json.loads((folder / "results.json").read_text())
    assert again["benchmarks"]["gsm8k"]["count"] == 2 and again["config"]["force"] is True


def test_an_out_that_is_a_file_fails_before_any_generation(checkpoint, tmp_path, monkeypatch, capsys):
    made = _no_generation(monkeypatch)
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me\n")
    for out, reason in ((afile, "it is a file, not a folder"), (afile / "sub", "Not a directory")):
        code, _, err = _eval(capsys, "--model", str(checkpoint), *FAST, "--out", str(out))
        assert code == 2
        line = _error_line(err)
        assert f"cannot save results in {out}" in line and reason in line
    assert not made and afile.read_text() == "keep me\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_fails_before_any_generation(checkpoint, tmp_path, monkeypatch, capsys):
    made = _no_generation(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = _eval(capsys, "--model", str(checkpoint), *FAST, "--out", str(locked / "run"))
    finally:
        locked.chmod(0o700)
    assert code == 2 and not made
    assert "Permission denied" in _error_line(err) and not (locked / "run").exists()


# ------------------------------------------------------------------ 2. no "accuracy 0.0 on 0 problems"


def test_empty_or_fully_skipped_benchmarks_are_refused_naming_the_file(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    made = _no_generation(monkeypatch)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = _eval(capsys, "--model", str(checkpoint), "--bench", str(empty))
    assert code == 2
    assert _error_line(err) == f"error: {empty}: no problems to evaluate: it holds no rows"

    rows = tmp_path / "heldout.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{k}+1?", "response": str(k + 1)}) + "\n" for k in range(3)))
    code, _, err = _eval(capsys, "--model", str(checkpoint), "--bench", str(rows), "--fields", '{"question": "q"}')
    assert code == 2
    line = _error_line(err)
    assert f"{rows}: no problems to evaluate: all 3 rows skipped (3 no question (field 'q'))" in line
    assert f"e.g. {rows}:1: no question" in line
    assert not made and not any((tmp_path / "runs" / "eval").iterdir())  # no empty run folder left behind

    # the right mapping evaluates all three rows
    code, _, err = _eval(
        capsys, "--model", str(checkpoint), *FAST, "--bench", str(rows), "--fields", '{"question": "prompt"}'
    )
    assert code == 0, err
    (folder,) = (tmp_path / "runs" / "eval").iterdir()
    assert json.loads((folder / "results.json").read_text())["benchmarks"]["heldout"]["count"] == 2  # --limit 2


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--limit", "0", "eval.limit must be >= 1 when given, got 0"),
        ("--limit", "-3", "eval.limit must be >= 1 when given, got -3"),
        ("--temperature", "-0.5", "eval.temperature must be >= 0, got -0.5"),
        ("--max-new-tokens", "0", "eval.max_new_tokens must be >= 1, got 0"),
        ("--batch-size", "0", "eval.batch_size must be >= 1, got 0"),
    ],
)
def test_bad_numbers_are_refused_in_one_line(flag, value, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _eval(capsys, "--model", str(tmp_path), flag, value)
    assert code == 2 and _error_line(err) == f"error: {message}"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ 3. the training layout by default


def test_a_checkpoint_is_evaluated_with_the_template_it_was_trained_with(checkpoint, tmp_path, capsys):
    trained = _copy(checkpoint, tmp_path)
    (trained / "mathforge.json").write_text(json.dumps({"template": "jiuzhang", "step": 120}))
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert f"prompt: jiuzhang, the template the model was trained with ({trained / 'mathforge.json'})" in err
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["benchmarks"]["gsm8k"]["prompt"] == "jiuzhang"
    assert results["prompt_source"] == str(trained / "mathforge.json")

    # --prompt wins; without mathforge.json, the benchmark's default as before
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--prompt", "plain", "--out", str(tmp_path / "b"))
    assert code == 0 and "trained with" not in err
    assert json.loads((tmp_path / "b" / "results.json").read_text())["benchmarks"]["gsm8k"]["prompt"] == "plain"
    code, _, err = _eval(capsys, "--model", str(checkpoint), *FAST, "--out", str(tmp_path / "c"))
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    assert code == 0 and results["benchmarks"]["gsm8k"]["prompt"] == "gsm8k-8shot"
    assert results["prompt_source"] == "benchmark default"

    # a template file kept beside the weights, named relative to the folder
    shutil.copy(Path(mathforge.__file__).parent / "prompts" / "alpaca-cot.toml", trained / "layout.toml")
    (trained / "mathforge.json").write_text(json.dumps({"template": "layout.toml"}))
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert json.loads((tmp_path / "d" / "results.json").read_text())["prompt_source"] == str(trained / "mathforge.json")

    # a template that does not exist: one line naming mathforge.json
    (trained / "mathforge.json").write_text(json.dumps({"template": "jiuzang"}))
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--out", str(tmp_path / "e"))
    assert code == 2
    line = _error_line(err)
    assert line.startswith(f"error: {trained / 'mathforge.json'}: template:") and "jiuzang" in line
    assert not (tmp_path / "e").exists()


def test_a_benchmark_that_seeded_the_training_data_needs_allow_contaminated(checkpoint, tmp_path, capsys):
    trained = _copy(checkpoint, tmp_path)
    manifest = "/runs/sky/manifest-merged.json"
    record = {"synth_manifests": [manifest], "seeded_from_test": {"gsm8k_test": [manifest]}}
    (trained / "mathforge.json").write_text(json.dumps(record))
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--out", str(tmp_path / "a"))
    assert code == 2 and _error_line(err) == (
        f"error: --bench gsm8k: {trained} was trained on data seeded from the gsm8k test split (synth manifest "
        f"{manifest}, recorded in {trained / 'mathforge.json'}), so its gsm8k score is contaminated; pass "
        "--allow-contaminated to evaluate it anyway (results.json records it)"
    )
    assert not (tmp_path / "a").exists()
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--bench", "math500", "--out", str(tmp_path / "b"))
    assert code == 0, err  # another split: not refused
    assert json.loads((tmp_path / "b" / "results.json").read_text())["contaminated"] == {}
    code, _, err = _eval(capsys, "--model", str(trained), *FAST, "--allow-contaminated", "--out", str(tmp_path / "c"))
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "results.json").read_text())["contaminated"] == {"gsm8k": [manifest]}
    assert "CONTAMINATED: gsm8k's test split seeded the training data" in (tmp_path / "c" / "results.md").read_text()


# ------------------------------------------------------------------ 4. unreadable checkpoints


def test_unreadable_checkpoints_are_one_line_data_errors_naming_the_file(checkpoint, tmp_path, capsys):
    cases = []
    corrupt = _copy(checkpoint, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:100])
    cases.append((corrupt, f"{corrupt / 'model.safetensors'}: not a readable safetensors file"))
    truncated = _copy(checkpoint, tmp_path / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    cases.append((truncated, f"{truncated / 'model.safetensors'}: not a readable safetensors file"))
    garbage = _copy(checkpoint, tmp_path / "garbage")
    (garbage / "config.json").write_text('{"model_type": "llama", "hidden_size": 64\n')
    cases.append((garbage, f"{garbage / 'config.json'}: line 2: invalid JSON"))
    listed = _copy(checkpoint, tmp_path / "listed")
    (listed / "config.json").write_text("[1, 2]")
    cases.append((listed, f"{listed / 'config.json'}: not a JSON object"))
    wrong = _copy(checkpoint, tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "hidden_size": "sixty-four"}))
    cases.append((wrong, f"{wrong / 'config.json'}: hidden_size must be a positive integer"))
    bare = _copy(checkpoint, tmp_path / "bare")
    for tokenizer_file in bare.glob("tokenizer*"):
        tokenizer_file.unlink()
    cases.append((bare, f"{bare}: no tokenizer (tokenizer.json, tokenizer.model"))
    broken = _copy(checkpoint, tmp_path / "broken")
    (broken / "tokenizer.json").write_text('{"version": ')
    cases.append((broken, f"{broken}: cannot load the tokenizer"))
    cases.append((tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: no such model folder"))
    for folder, message in cases:
        code, _, err = _eval(capsys, "--model", str(folder), *FAST, "--out", str(tmp_path / "out"))
        assert code == 2, (folder, err)
        line = _error_line(err)
        assert message in line, line
        assert "sentencepiece" not in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 5. a server that is not there


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_an_unreachable_server_fails_in_seconds_naming_the_url(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    code, _, err = _eval(capsys, "--api", url, "--served-model", "m", "--limit", "2")
    assert time.monotonic() - start < 20  # was 67 s of retries (it takes ~0.01 s)
    assert code == 2 and _error_line(err) == f"error: cannot reach {url}: connection refused"
    assert not any((tmp_path / "runs" / "eval").iterdir())


def test_connection_errors_during_a_run_name_the_url_and_the_cause():
    from mathforge.backends import BackendError, OpenAIBackend

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    backend = OpenAIBackend(url, "m", max_retries=2, backoff_s=0.001)
    start = time.monotonic()
    with pytest.raises(BackendError) as error:
        backend.generate(["1+1="], max_new_tokens=2)
    assert time.monotonic() - start < 20
    assert str(error.value) == f"{url}: gave up after 3 attempts: cannot reach the server: connection refused"
    assert backend.usage.failures == 1 and sum(backend.usage.retries.values()) == 3


# ------------------------------------------------------------------ 6. the version


def test_mathforge_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"mathforge {mathforge.__version__}\n"


def test_client_settings_reach_the_client_and_unknown_keys_are_refused(tmp_path, monkeypatch, capsys):
    from fake_openai import LoopbackServer

    from mathforge.backends import OpenAIBackend

    monkeypatch.chdir(tmp_path)
    code, _, err = _eval(capsys, "--api", "http://127.0.0.1:1/v1", "--served-model", "m", "--set", "bench_seconds=2")
    assert code == 2 and _error_line(err).startswith("error: eval: unknown key 'bench_seconds'; allowed: ")
    assert "max_retry_after_s, bench_s, max_bench_s" in _error_line(err)
    code, _, err = _eval(capsys, "--api", "http://127.0.0.1:1/v1", "--served-model", "m", "--set", "bench_s=-1")
    assert code == 2 and _error_line(err) == "error: eval.bench_s must be >= 0, got -1.0"

    made: list[OpenAIBackend] = []
    real = runner.make_backend
    monkeypatch.setattr(runner, "make_backend", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    # the server asks to wait 30 s once: max_retry_after_s = 0.25 caps the wait the client honours
    with LoopbackServer(lambda m, i: "The answer is: 7", script=["429"], retry_after="30") as srv:
        sets = ["--set", "max_retry_after_s=0.25", "--set", "bench_s=2.5", "--set", "max_bench_s=5"]
        code, _, err = _eval(capsys, "--api", srv.url, "--served-model", "m", "--limit", "1", "--out", "ev", *sets)
    assert code == 0, err
    assert {k: made[0].options[k] for k in ("max_retry_after_s", "bench_s", "max_bench_s")} == {
        "max_retry_after_s": 0.25,
        "bench_s": 2.5,
        "max_bench_s": 5.0,
    }
    client = json.loads((tmp_path / "ev" / "results.json").read_text())["client"]
    assert client["retry_after"] == 1 and client["retry_after_s"] == 0.25 and client["retries"] == {"429": 1}
