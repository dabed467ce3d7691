"""Scale benchmark: N symbolic problems through synth → merge → token store → packer → 2-rank training.

    python -m mathforge.bench.scale [--items 1000000] [--shards 2] [--train-steps 8] [--out bench/results/cpu]

Each phase runs in its own processes; the parent takes each one's wall time and peak RSS (`os.wait4`: the
process's ru_maxrss, which covers its own waited children), and samples the process tree every 0.2 s for the
peak of the tree's summed RSS and of its private (anonymous) part — memory-mapped token-store pages count in
RSS but are shared through the page cache, so the private part is what each rank really adds.

1. synth: `mathforge synth synth/configs/symbolic.toml --shard i/S` in S parallel processes (filters off: they
   run once, in the merge);
2. merge: `--merge S` with exact dedup, near dedup (MinHash + LSH) and decontamination (n = 13, GSM8K test +
   MATH-500) over all shards' journals;
3. tokenize: the merged rows into the memory-mapped token store (a BPE tokenizer trained on 20k merged rows);
4. pack: the token store opened memory-mapped, every document packed (C++ best-fit-decreasing) and every
   micro-batch built on the background loader;
5. train: `torchrun --nproc_per_node 2` (gloo, CPU), a tiny model for a few steps reading the same store.

Results go to bench/results/<device>/scale.json with the environment and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mathforge.bench.common import environment, write_result

GIB = 2**30
SYMBOLIC = Path(__file__).resolve().parents[1] / "synth" / "configs" / "symbolic.toml"


class TreeSampler:
    """Samples the summed RSS and private (anonymous) RSS of a process tree every `every_s` seconds."""

    def __init__(self, pids: list[int], every_s: float = 0.2) -> None:
        import psutil

        self.roots = [psutil.Process(p) for p in pids]
        self.peak_rss = self.peak_private = 0
        self.peak_private_per_process = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        import psutil

        while not self._stop.is_set():
            rss = private = 0
            for root in self.roots:
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        full = p.memory_full_info()
                    except psutil.Error:
                        continue
                    own = full.rss - full.shared  # anonymous (private) pages
                    rss, private = rss + full.rss, private + own
                    self.peak_private_per_process = max(self.peak_private_per_process, own)
            self.peak_rss, self.peak_private = max(self.peak_rss, rss), max(self.peak_private, private)
            self._stop.wait(every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_phase(name: str, commands: list[list[str]], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs `commands` in parallel; wall time, per-process peak RSS (wait4) and the tree's sampled peaks."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    sampler = TreeSampler([p.pid for p in procs])
    outputs = []
    peaks = []
    for p in procs:
        out = p.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        outputs.append(out)
        peaks.append(usage.ru_maxrss * 1024)
        if p.returncode != 0:
            sampler.stop()
            raise RuntimeError(f"phase {name}: {' '.join(commands[0][:6])} … exited {p.returncode}:\n{out[-3000:]}")
    seconds = time.perf_counter() - start
    sampler.stop()
    return {
        "name": name,
        "seconds": round(seconds, 2),
        "processes": len(commands),
        "peak_rss_gib_per_process": round(max(peaks) / GIB, 3),
        "peak_rss_gib_tree_sampled": round(sampler.peak_rss / GIB, 3),
        "peak_private_rss_gib_tree_sampled": round(sampler.peak_private / GIB, 3),
        "peak_private_rss_gib_per_process_sampled": round(sampler.peak_private_per_process / GIB, 3),
        "output_tail": outputs[-1][-600:],
    }


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _tokenize_job(merged: str, tokenizer: str, cache: str, max_seq_len: int, num_proc: int) -> None:
    from transformers import AutoTokenizer

    from mathforge.trainer.data import tokenize

    tok = AutoTokenizer.from_pretrained(tokenizer)
    data = tokenize([merged], tok, template="plain", max_seq_len=max_seq_len, num_proc=num_proc, cache_dir=cache)
    print(json.dumps(data.counts))


def _pack_job(store: str, micro_batch_tokens: int) -> None:
    import numpy as np

    from mathforge.trainer.data import Prefetcher, build_micro_batch, open_token_store
    from mathforge.trainer.packing import fill_ratio

    data = open_token_store(store)
    start = time.perf_counter()
    from mathforge.trainer.data import plan_micro_batches

    bins = plan_micro_batches(data, micro_batch_tokens)
    pack_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = 0
    with Prefetcher(bins, lambda b: build_micro_batch(data, b), depth=8) as loader:
        for batch in loader:
            tokens += len(batch.input_ids)
    load_s = time.perf_counter() - start
    info = {
        "documents": len(data),
        "bins": len(bins),
        "fill": fill_ratio(bins, np.asarray(data.lengths), micro_batch_tokens),
        "pack_seconds": round(pack_s, 3),
        "build_all_micro_batches_seconds": round(load_s, 3),
        "tokens": tokens,
    }
    print(json.dumps(info))


def _write_train_recipe(
    path: Path, merged: Path, tokenizer: Path, cache: Path, out: Path, steps: int, max_seq_len: int
) -> None:
    path.write_text(
        f"""
[run]
out_dir = "{out}"
tensorboard = false
[model]
init = "tiny"
[data]
tokenizer = "{tokenizer}"
template = "plain"
max_seq_len = {max_seq_len}
cache_dir = "{cache}"
[optim]
lr = 1e-3
[train]
micro_batch_tokens = 2048
grad_accum = 2
[[stages]]
name = "all"
data = ["{merged}"]
steps = {steps}
"""
    )


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def run(items: int, shards: int, work: Path, train_steps: int, num_proc: int, max_seq_len: int = 512) -> dict:
    out = work / "synth"
    sets = [f'run.output="{out}"', f"run.items={items}", "run.progress=false"]
    off = ["quality.exact_dedup=false", "quality.near_dedup=false", "quality.decontaminate=false"]
    synth = [
        _python("-m", "mathforge.cli", "synth", str(SYMBOLIC), "--shard", f"{i}/{shards}", *_sets(sets + off))
        for i in range(shards)
    ]
    phases = [run_phase("synth", synth)]
    merge = _python(
        "-m",
        "mathforge.cli",
        "synth",
        str(SYMBOLIC),
        "--merge",
        str(shards),
        *_sets([*sets, "quality.near_dedup=true"]),
    )
    phases.append(run_phase("merge (exact + near dedup + decontamination)", [merge]))
    manifest = json.loads((out / "manifest-merged.json").read_text())

    merged, tokenizer, cache = out / "merged", work / "tokenizer", work / "cache"
    _train_tokenizer(merged, tokenizer)
    code = "import sys; from mathforge.bench.scale import _tokenize_job as j; j(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5]))"
    args = [str(merged), str(tokenizer), str(cache), str(max_seq_len), str(num_proc)]
    phases.append(run_phase("tokenize into the token store", [_python("-c", code, *args)]))
    counts = _last_json(phases[-1]["output_tail"])
    (store,) = cache.glob("tokens-*")
    store_bytes = sum(f.stat().st_size for f in store.iterdir())
    code = "import sys; from mathforge.bench.scale import _pack_job as j; j(sys.argv[1], int(sys.argv[2]))"
    phases.append(
        run_phase("pack + build every micro-batch (memory-mapped)", [_python("-c", code, str(store), "2048")])
    )
    packing = _last_json(phases[-1]["output_tail"])
    if train_steps > 0:
        recipe = work / "train.toml"
        _write_train_recipe(recipe, merged, tokenizer, cache, work / "train", train_steps, max_seq_len)
        torchrun = _python("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [*torchrun, "-m", "mathforge.cli", "train", str(recipe), "--no-progress"]
        phases.append(run_phase(f"train 2 ranks (gloo, tiny model, {train_steps} steps)", [command], env=env))
    return {
        "items": items,
        "shards": shards,
        "filters": manifest["filters"],
        "merged_rows": manifest["rows"],
        "token_store": {"bytes": store_bytes, "gib": round(store_bytes / GIB, 3), **counts},
        "packing": packing,
        "phases": phases,
    }


def _sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def _train_tokenizer(merged: Path, folder: Path, rows: int = 20000) -> None:
    from mathforge.datasources import read_rows
    from mathforge.trainer.tokenizer import train_bpe_tokenizer

    texts = []
    for row in read_rows(merged):
        texts.append(row.value["prompt"] + "\n" + row.value["response"])
        if len(texts) >= rows:
            break
    train_bpe_tokenizer(texts, 1000, folder)


def lsh_benchmark(n: int, num_perm: int = 128, bands: int = 16, threshold: float = 0.8, seed: int = 0) -> dict:
    """Near-dedup verdicts (C++ LSH banding + union-find) over `n` random signatures, a tenth of them planted
    copies of an earlier row with up to 10% of the values changed; counts the planted copies found."""
    import numpy as np

    from mathforge.synth import quality

    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 1 << 32, size=(n, num_perm), dtype=np.uint32)
    copies = rng.choice(np.arange(n // 2, n), size=n // 10, replace=False)  # copies in the second half
    sources = rng.integers(0, n // 2, size=len(copies))  # of rows in the first half
    sig[copies] = sig[sources]
    edits = rng.integers(0, num_perm, size=(len(copies), num_perm // 10))
    sig[copies[:, None], edits] ^= 1
    start = time.perf_counter()
    roots = quality.near_duplicate_roots(sig, bands=bands, threshold=threshold)
    seconds = time.perf_counter() - start
    found = int((roots[copies] != copies).sum())
    return {
        "rows": n,
        "num_perm": num_perm,
        "bands": bands,
        "threshold": threshold,
        "signature_gib": round(sig.nbytes / GIB, 3),
        "seconds": round(seconds, 2),
        "planted": len(copies),
        "planted_found": found,
        "removed": int((roots != np.arange(n)).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=8, help="steps of the 2-rank training phase (0: skip)")
    parser.add_argument("--num-proc", type=int, default=2, help="tokenizer processes")
    parser.add_argument("--work", default="", help="working folder (default: a temporary one, deleted)")
    parser.add_argument("--name", default="scale", help="result file name (bench/results/<device>/<name>.json)")
    parser.add_argument("--note", default="", help="a note stored with the result (e.g. the machine's load)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--lsh", type=int, default=0, metavar="N", help="only time near-dedup of N signatures")
    args = parser.parse_args(argv)
    if args.lsh:
        result = {"lsh": lsh_benchmark(args.lsh), "environment": environment(), "note": args.note}
        result["machine_load"] = {"loadavg": os.getloadavg(), "cpus": os.cpu_count()}
        Console().print(result["lsh"])
        if not args.no_write:
            Console().print(f"wrote {write_result(args.name + '_lsh', result)}")
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mathforge-scale-"))
    load_before = os.getloadavg()
    try:
        result = run(args.items, args.shards, work, args.train_steps, args.num_proc)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["environment"] = environment("datasets", "pyarrow", "tokenizers")
    result["machine_load"] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}
    result["note"] = args.note
    table = Table(title=f"scale: {args.items:,} symbolic items in {args.shards} shards")
    for column in ("phase", "seconds", "peak RSS/process GiB", "tree RSS GiB", "tree private GiB"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for p in result["phases"]:
        table.add_row(
            p["name"],
            f"{p['seconds']:.1f}",
            f"{p['peak_rss_gib_per_process']:.2f}",
            f"{p['peak_rss_gib_tree_sampled']:.2f}",
            f"{p['peak_private_rss_gib_tree_sampled']:.2f}",
        )
    console = Console()
    console.print(table)
    console.print(f"merged rows {result['merged_rows']:,}; token store {result['token_store']['gib']} GiB")
    if not args.no_write:
        console.print(f"wrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
