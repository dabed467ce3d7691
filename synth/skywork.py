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

Each method is one handler registered in `SKYWORK_METHODS` below (its name is what `[skywork] methods`
lists); each Evol operation is one prompt template registered in `EVOL_OPS`. Adding a method is adding
one registered handler here (and its prompt template under prompts/skywork/).
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mathforge.errors import ConfigError
from mathforge.registry import Registry
from mathforge.synth.common import PIPELINES, Context, Reject, check_answer, consistent, finish, make_row, split_reply
from mathforge.synth.seeds import Seed, k_center_greedy, load_checked_seeds

if TYPE_CHECKING:
    from mathforge.synth.config import SkyworkSettings, SynthConfig

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


@dataclass
class Job:
    """One work item being processed: its seed and stage, its own random draws, and what it used."""

    seed: Seed
    stage: str
    rng: random.Random
    offset: int  # added to the sampling seed of the item's requests (each request its own offset)
    k: int  # samples per request for self-consistency (1 = off)
    settings: SkyworkSettings
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class Draft:
    """What a method made of its seed: the new problem, its solution and answer, and meta to record."""

    prompt: str
    solution: str
    answer: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)


Method = Callable[[Job, Context], Awaitable[Draft]]
# method name ([skywork] methods) -> handler; the registration order is the default `methods` order
SKYWORK_METHODS: Registry[Method] = Registry("Skywork method")
# Evol-Instruct operation ([skywork] evol_ops) -> its prompt template
EVOL_OPS: Registry[str] = Registry("Evol operation")
for _op in ("rewrite", "constraints", "deepen", "concretize", "steps"):
    EVOL_OPS.add(_op, f"skywork/evol_{_op}.txt")


def mask_number(question: str, rng: random.Random) -> tuple[str, str] | None:
    """(question with one number replaced by X, that number) or None if it has no plain number."""
    found = [m for m in _NUMBER.finditer(question) if "$" not in question[max(0, m.start() - 1) : m.end() + 1]]
    if not found:
        return None
    m = found[rng.randrange(len(found))]
    return question[: m.start()] + "X" + question[m.end() :], m.group()


@SKYWORK_METHODS.register("answer_aug")
async def answer_aug(job: Job, ctx: Context) -> Draft:
    """Solve the seed again; kept when the answer matches the seed's."""
    out = await ctx.ask(
        "skywork/answer_aug.txt", n=job.k, usage=job.usage, seed_offset=job.offset, question=job.seed.question
    )
    solution, extra = consistent(out.texts, ctx)
    return Draft(job.seed.question, solution, check_answer(solution, ctx, job.seed.answer), out.model, extra)


@SKYWORK_METHODS.register("rephrase")
async def rephrase(job: Job, ctx: Context) -> Draft:
    """Reword the seed, then solve; the answer must match the seed's."""
    out = await ctx.ask("skywork/rephrase.txt", usage=job.usage, seed_offset=job.offset, question=job.seed.question)
    prompt, solution = split_reply(out.texts[0])
    if not prompt:
        raise Reject("rephrase: the reply has no 'Problem:' part", "no problem in reply")
    return Draft(prompt, solution, check_answer(solution, ctx, job.seed.answer), out.model)


async def _masked(method: str, job: Job, ctx: Context) -> tuple[str, str, str | None, str, str]:
    """Masks a number of the seed's question and asks `method`'s template: (masked question, number,
    the reply's problem, its solution, model)."""
    seed = job.seed
    if seed.answer is None:
        raise Reject(f"{method} needs the seed's answer; seed {seed.id} has none", "seed has no answer")
    masked = mask_number(seed.question, job.rng)
    if masked is None:
        raise Reject(f"{method}: seed {seed.id} has no plain number to mask", "no number to mask")
    masked_q, number = masked
    out = await ctx.ask(
        f"skywork/{method}.txt", usage=job.usage, seed_offset=job.offset, masked_question=masked_q, answer=seed.answer
    )
    problem, solution = split_reply(out.texts[0])
    return masked_q, number, problem, solution, out.model


@SKYWORK_METHODS.register("fobar")
async def fobar(job: Job, ctx: Context) -> Draft:
    """Mask a number as X, give the answer, ask for X; the solution must recover the masked number."""
    masked_q, number, _, solution, model = await _masked("fobar", job, ctx)
    prompt = (
        f"{masked_q}\nIf we know the answer to the above question is {job.seed.answer}, "
        f"what is the value of the unknown variable X?"
    )
    return Draft(prompt, solution, check_answer(solution, ctx, number), model, {"masked": number})


@SKYWORK_METHODS.register("self_verify")
async def self_verify(job: Job, ctx: Context) -> Draft:
    """Restate question + answer as a problem asking for the masked number; the solution must recover it."""
    _, number, problem, solution, model = await _masked("self_verify", job, ctx)
    if not problem:
        raise Reject("self_verify: the reply has no 'Problem:' part", "no problem in reply")
    return Draft(problem, solution, check_answer(solution, ctx, number), model, {"masked": number})


@SKYWORK_METHODS.register("evol")
async def evol(job: Job, ctx: Context) -> Draft:
    """`evol_rounds` rounds of Evol operations (each drawn from the item's own seed), then a solve."""
    ops_allowed = job.settings.evol_ops
    prompt, ops = job.seed.question, []
    for r in range(job.settings.evol_rounds):
        op = ops_allowed[job.rng.randrange(len(ops_allowed))]
        out = await ctx.ask(
            EVOL_OPS.get(op, "skywork.evol_ops"), usage=job.usage, seed_offset=job.offset + r, question=prompt
        )
        new, _ = split_reply(out.texts[0])
        if not new:
            raise Reject(f"evol round {r + 1} ({op}): the reply has no 'Problem:' part", "no problem in reply")
        prompt = new
        ops.append(op)
    out = await ctx.ask(
        "skywork/answer_aug.txt", n=job.k, usage=job.usage, seed_offset=job.offset + 99, question=prompt
    )
    solution, extra = consistent(out.texts, ctx)
    answer = check_answer(solution, ctx, None)
    return Draft(prompt, solution, answer, out.model, {**extra, "evol_ops": ops})


@SKYWORK_METHODS.register("teacher")
async def teacher(job: Job, ctx: Context) -> Draft:
    """Write a new problem and solution from the seed, then (`self_check`) check and correct the solution."""
    sk = job.settings
    template = "skywork/teacher_hard.txt" if job.stage == "hard" and sk.hard_by_prompt else "skywork/teacher.txt"
    out = await ctx.ask(template, n=job.k, usage=job.usage, seed_offset=job.offset, question=job.seed.question)
    drafts = [split_reply(t) for t in out.texts]
    prompt = drafts[0][0] or ""
    if not prompt:
        raise Reject("teacher: the reply has no 'Problem:' part", "no problem in reply")
    solution, extra = drafts[0][1], {}
    if sk.self_check:
        checked = await ctx.ask(
            "skywork/self_check.txt",
            n=job.k,
            usage=job.usage,
            seed_offset=job.offset + 1,
            question=prompt,
            solution=solution,
        )
        solution, extra = consistent([split_reply(t)[1] for t in checked.texts], ctx)
        extra["self_checked"] = True
    return Draft(prompt, solution, check_answer(solution, ctx, None), out.model, extra)


@PIPELINES.register("skywork")
class SkyworkPipeline:
    name = "skywork"
    sync = False

    def __init__(self, cfg: SynthConfig) -> None:
        sk = cfg.skywork
        self.cfg, self.sk, self.seed = cfg, sk, cfg.run.seed
        self.methods = list(sk.methods)
        if not self.methods:
            raise ConfigError("skywork.methods is empty; allowed values: " + ", ".join(SKYWORK_METHODS))
        self.handlers = {m: SKYWORK_METHODS.get(m, "skywork.methods") for m in self.methods}
        q = cfg.quality
        checked = load_checked_seeds(
            sk.seeds,
            sk.seed_fields,
            allow_test_split=sk.allow_test_split,
            decontamination=(q.decontamination_n, q.decontamination_threshold, q.decontamination_min_words),
        )
        seeds = checked.seeds
        if not seeds:
            raise ConfigError(f"skywork.seeds = {sk.seeds} gave no seeds")
        hard_levels = set(sk.hard_levels)
        normal = [s for s in seeds if s.level is None or s.level not in hard_levels]
        hard = [s for s in seeds if s.level is not None and s.level in hard_levels]
        if sk.hard_by_prompt and not hard:
            hard = list(normal)
        self.pools = {"normal": self._select(normal), "hard": self._select(hard)}
        total, mix = cfg.run.items, sk.mix
        weight = sum(mix.values())
        n_hard = round(total * mix.get("hard", 0) / weight) if self.pools["hard"] else 0
        self.counts = {"normal": total - n_hard if self.pools["normal"] else 0, "hard": n_hard}
        self.info = {
            "seeds": len(seeds),
            "pool_normal": len(self.pools["normal"]),
            "pool_hard": len(self.pools["hard"]),
            "items": self.counts,
            **checked.info(),
        }

    def _select(self, seeds: list[Seed]) -> list[Seed]:
        k = self.sk.select
        if k <= 0 or k >= len(seeds):
            return seeds
        picks = k_center_greedy([s.question for s in seeds], k, ngram=self.sk.select_ngram, seed=self.seed)
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
                out.append(
                    {
                        "id": f"sky-{stage}-{seed.id}-{method}-{rep}",
                        "stage": stage,
                        "seed": seed,
                        "method": method,
                        "pass": rep,
                    }
                )
        return out

    async def process(self, item: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
        seed: Seed = item["seed"]
        method, stage = item["method"], item["stage"]
        rng = random.Random(f"{self.seed}:{item['id']}")
        k = max(1, ctx.consistency)
        job = Job(seed, stage, rng, offset=rng.randrange(1 << 20), k=k, settings=self.sk)
        draft = await self.handlers[method](job, ctx)
        solution = draft.solution
        if solution.lstrip().lower().startswith("solution:"):
            solution = solution.lstrip()[len("solution:") :]
        meta = {
            "id": item["id"],
            "pipeline": "skywork",
            "method": method,
            "stage": stage,
            "seed_id": seed.id,
            "seed_source": seed.source,
            "difficulty": seed.level,
            "model": draft.model,
            "sampling": ctx.sampling_meta(k),
            "answer": draft.answer,
            "usage": job.usage,
            **draft.extra,
        }
        return [make_row(draft.prompt, finish(solution, ctx.marker), meta)]
