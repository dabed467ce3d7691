"""The Skywork-Math pipeline: diverse seeds → three augmentation methods → stage 1 "normal" / stage 2 "hard".

Work item k of a stage takes seed `pool[(k // M) % P]` and method `methods[k % M]` (M methods, P seeds
in the stage's pool), pass `k // (M * P)`: every seed gets every method before any seed gets a second
pass. Methods:

- MetaMath-style — ``answer_aug`` (solve the seed again; kept when the answer matches the seed's),
  ``rephrase`` (reword, then solve; answer must match), ``fobar`` (mask a number of the question as X,
  give the answer, ask for X; must recover the masked number), ``self_verify`` (restate question +
  answer as a problem asking for the masked number; must recover it);
- Evol-Instruct-style ``evol`` — `evol_rounds` rounds of rewrite / add constraints / deepen /
  concretise / more steps (the op of each round drawn from the item's own seed), then a solve;
- teacher-style ``teacher`` — write a new problem and its solution from the seed, then (``self_check``)
  check and correct the solution.

Stage "hard" draws seeds of MATH levels `hard_levels` (or, with `hard_by_prompt`, any seed with the
harder teacher prompt); the two stages get `items * mix` items. Answers unknown in advance (evol,
teacher) are kept by self-consistency when `[quality] self_consistency = k` > 1.
"""

from __future__ import annotations

import random
import re
from typing import Any

from mathforge.errors import ConfigError
from mathforge.synth.common import Context, Reject, check_answer, consistent, finish, make_row, split_reply
from mathforge.synth.seeds import Seed, k_center_greedy, load_seeds

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def mask_number(question: str, rng: random.Random) -> tuple[str, str] | None:
    """(question with one number replaced by X, that number) or None if it has no plain number."""
    found = [m for m in _NUMBER.finditer(question) if "$" not in question[max(0, m.start() - 1):m.end() + 1]]
    if not found:
        return None
    m = found[rng.randrange(len(found))]
    return question[:m.start()] + "X" + question[m.end():], m.group()


class SkyworkPipeline:
    name = "skywork"
    sync = False

    def __init__(self, cfg: dict[str, Any]) -> None:
        sk = cfg["skywork"]
        self.cfg, self.sk, self.seed = cfg, sk, cfg["run"]["seed"]
        self.methods = list(sk["methods"])
        if not self.methods:
            raise ConfigError("skywork.methods is empty; allowed values: " + ", ".join(
                ["answer_aug", "rephrase", "fobar", "self_verify", "evol", "teacher"]))
        seeds = load_seeds(sk["seeds"], sk["seed_fields"])
        if not seeds:
            raise ConfigError(f"skywork.seeds = {sk['seeds']} gave no seeds")
        hard_levels = set(sk["hard_levels"])
        normal = [s for s in seeds if s.level is None or s.level not in hard_levels]
        hard = [s for s in seeds if s.level is not None and s.level in hard_levels]
        if sk["hard_by_prompt"] and not hard:
            hard = list(normal)
        self.pools = {"normal": self._select(normal), "hard": self._select(hard)}
        total, mix = cfg["run"]["items"], sk["mix"]
        weight = sum(mix.values())
        n_hard = round(total * mix.get("hard", 0) / weight) if self.pools["hard"] else 0
        self.counts = {"normal": total - n_hard if self.pools["normal"] else 0, "hard": n_hard}
        self.info = {"seeds": len(seeds), "pool_normal": len(self.pools["normal"]),
                     "pool_hard": len(self.pools["hard"]), "items": self.counts}

    def _select(self, seeds: list[Seed]) -> list[Seed]:
        k = self.sk["select"]
        if k <= 0 or k >= len(seeds):
            return seeds
        picks = k_center_greedy([s.question for s in seeds], k, ngram=self.sk["select_ngram"], seed=self.seed)
        return [seeds[i] for i in picks]

    def items(self) -> list[dict[str, Any]]:
        out = []
        m = len(self.methods)
        for stage in ("normal", "hard"):
            pool = self.pools[stage]
            for k in range(self.counts[stage]):
                seed = pool[(k // m) % len(pool)]
                method = self.methods[k % m]
                rep = k // (m * len(pool))
                out.append({"id": f"sky-{stage}-{seed.id}-{method}-{rep}", "stage": stage, "seed": seed,
                            "method": method, "pass": rep})
        return out

    async def process(self, item: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
        seed: Seed = item["seed"]
        method, stage = item["method"], item["stage"]
        rng = random.Random(f"{self.seed}:{item['id']}")
        usage: dict[str, int] = {}
        k = max(1, ctx.consistency)
        offset = rng.randrange(1 << 20)
        extra: dict[str, Any] = {}
        if method == "answer_aug":
            out = await ctx.ask("skywork/answer_aug.txt", n=k, usage=usage, seed_offset=offset, question=seed.question)
            solution, extra = consistent(out.texts, ctx)
            prompt = seed.question
            answer = check_answer(solution, ctx, seed.answer)
        elif method in ("fobar", "self_verify"):
            if seed.answer is None:
                raise Reject(f"{method} needs the seed's answer; seed {seed.id} has none", "seed has no answer")
            masked = mask_number(seed.question, rng)
            if masked is None:
                raise Reject(f"{method}: seed {seed.id} has no plain number to mask", "no number to mask")
            masked_q, number = masked
            out = await ctx.ask(f"skywork/{method}.txt", usage=usage, seed_offset=offset, masked_question=masked_q,
                                answer=seed.answer)
            reply_problem, solution = split_reply(out.texts[0])
            if method == "fobar":
                prompt = (f"{masked_q}\nIf we know the answer to the above question is {seed.answer}, "
                          f"what is the value of the unknown variable X?")
            else:
                prompt = reply_problem or ""
                if not prompt:
                    raise Reject("self_verify: the reply has no 'Problem:' part", "no problem in reply")
            answer = check_answer(solution, ctx, number)
            extra = {"masked": number}
        elif method == "rephrase":
            out = await ctx.ask("skywork/rephrase.txt", usage=usage, seed_offset=offset, question=seed.question)
            prompt, solution = split_reply(out.texts[0])
            if not prompt:
                raise Reject("rephrase: the reply has no 'Problem:' part", "no problem in reply")
            answer = check_answer(solution, ctx, seed.answer)
        elif method == "evol":
            prompt, ops = seed.question, []
            for r in range(self.sk["evol_rounds"]):
                op = self.sk["evol_ops"][rng.randrange(len(self.sk["evol_ops"]))]
                out = await ctx.ask(f"skywork/evol_{op}.txt", usage=usage, seed_offset=offset + r, question=prompt)
                new, _ = split_reply(out.texts[0])
                if not new:
                    raise Reject(f"evol round {r + 1} ({op}): the reply has no 'Problem:' part", "no problem in reply")
                prompt = new
                ops.append(op)
            out = await ctx.ask("skywork/answer_aug.txt", n=k, usage=usage, seed_offset=offset + 99, question=prompt)
            solution, extra = consistent(out.texts, ctx)
            answer = check_answer(solution, ctx, None)
            extra["evol_ops"] = ops
        else:  # teacher
            template = "skywork/teacher_hard.txt" if stage == "hard" and self.sk["hard_by_prompt"] else "skywork/teacher.txt"
            out = await ctx.ask(template, n=k, usage=usage, seed_offset=offset, question=seed.question)
            drafts = [split_reply(t) for t in out.texts]
            prompt = drafts[0][0] or ""
            if not prompt:
                raise Reject("teacher: the reply has no 'Problem:' part", "no problem in reply")
            solution = drafts[0][1]
            if self.sk["self_check"]:
                checked = await ctx.ask("skywork/self_check.txt", n=k, usage=usage, seed_offset=offset + 1,
                                        question=prompt, solution=solution)
                texts = [split_reply(t)[1] for t in checked.texts]
                solution, extra = consistent(texts, ctx)
                extra["self_checked"] = True
            answer = check_answer(solution, ctx, None)
        if solution.lstrip().lower().startswith("solution:"):
            solution = solution.lstrip()[len("solution:"):]
        meta = {"id": item["id"], "pipeline": "skywork", "method": method, "stage": stage, "seed_id": seed.id,
                "seed_source": seed.source, "difficulty": seed.level, "model": out.model,
                "sampling": {**ctx.sampling, "n": k}, "answer": answer, "usage": usage, **extra}
        return [make_row(prompt, finish(solution, ctx.marker), meta)]
