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

Stage "hard" draws seeds of MATH levels `hard_levels` (or, with `hard_by_prompt` and no such seeds, any
seed) and its teacher items use the harder teacher prompt; the two stages get `items * mix` items.

One item may give several rows, each a distinct solution (different normalised text) of its problem, at
most `[skywork] solutions`: ``answer_aug`` asks for that many samples and keeps the distinct correct ones
(MetaMath's answer augmentation); answers unknown in advance (evol, teacher) are voted on by
self-consistency when `[quality] self_consistency = k` > 1 — k drafts, the majority answer, the drafts
agreeing with it kept (meta: votes, samples, agreement). Replies cut at max_tokens are never used.

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
from mathforge.synth import quality
from mathforge.synth.common import PIPELINES, Context, Reject, agreeing, check_answer, finish, make_row, split_reply
from mathforge.synth.seeds import Seed, load_checked_seeds, select

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
    """What a method made of its seed: the new problem, its solution and answer, meta to record, and other
    solutions of the same problem (same answer) worth a row of their own."""

    prompt: str
    solution: str
    answer: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)
    more: list[str] = field(default_factory=list)


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


def _voted(texts: list[str], ctx: Context) -> tuple[list[str], dict[str, Any]]:
    """All drafts when there is one; else the drafts agreeing with the majority answer (self-consistency)."""
    return (texts, {}) if len(texts) == 1 else agreeing(texts, ctx)


@SKYWORK_METHODS.register("answer_aug")
async def answer_aug(job: Job, ctx: Context) -> Draft:
    """Solve the seed again `solutions` times; the samples whose answer matches the seed's are kept."""
    n = max(1, job.settings.solutions)
    out = await ctx.ask(
        "skywork/answer_aug.txt", n=n, usage=job.usage, seed_offset=job.offset, question=job.seed.question
    )
    correct, first_miss = [], None
    for text in out.texts:
        try:
            answer = check_answer(text, ctx, job.seed.answer)
        except Reject as why:
            first_miss = first_miss or why
            continue
        correct.append((text, answer))
    if not correct:
        raise first_miss or Reject("answer_aug: no sample", "no sample")
    extra = {"samples": len(out.texts), "correct": len(correct)}
    return Draft(job.seed.question, correct[0][0], correct[0][1], out.model, extra, [t for t, _ in correct[1:]])


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
    solutions, extra = _voted(out.texts, ctx)
    answer = check_answer(solutions[0], ctx, None)
    return Draft(prompt, solutions[0], answer, out.model, {**extra, "evol_ops": ops}, solutions[1:])


@SKYWORK_METHODS.register("teacher")
async def teacher(job: Job, ctx: Context) -> Draft:
    """Write a new problem and solution from the seed (the hard-stage prompt for hard items), then with
    `self_check` have k drafts check and correct the solution, else solve it k - 1 more times; with k > 1 the
    drafts agreeing with the majority answer are kept."""
    template = "skywork/teacher_hard.txt" if job.stage == "hard" else "skywork/teacher.txt"
    out = await ctx.ask(template, usage=job.usage, seed_offset=job.offset, question=job.seed.question)
    prompt, solution = split_reply(out.texts[0])
    if not prompt:
        raise Reject("teacher: the reply has no 'Problem:' part", "no problem in reply")
    extra: dict[str, Any] = {"prompt_template": template.rsplit("/", 1)[1]}
    if job.settings.self_check:
        checked = await ctx.ask(
            "skywork/self_check.txt",
            n=job.k,
            usage=job.usage,
            seed_offset=job.offset + 1,
            question=prompt,
            solution=solution,
        )
        drafts = [split_reply(t)[1] for t in checked.texts]
        extra["self_checked"] = True
    else:
        drafts = [solution]
        if job.k > 1:
            again = await ctx.ask(
                "skywork/answer_aug.txt", n=job.k - 1, usage=job.usage, seed_offset=job.offset + 1, question=prompt
            )
            drafts += again.texts
    solutions, voted = _voted(drafts, ctx)
    answer = check_answer(solutions[0], ctx, None)
    return Draft(prompt, solutions[0], answer, out.model, {**extra, **voted}, solutions[1:])


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
        sk = self.sk
        return select(seeds, sk.select, mix=sk.select_mix, by_level=sk.select_by_level, seed=self.seed)

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
        responses = _distinct([draft.solution, *draft.more], ctx.marker, max(1, self.sk.solutions))
        meta = {
            "id": item["id"],
            "pipeline": "skywork",
            "method": method,
            "stage": stage,
            "seed_id": seed.id,
            "seed_source": seed.source,
            "difficulty": seed.level,
            "model": draft.model,
            "sampling": ctx.sampling_meta(draft.extra.get("samples", k)),
            "answer": draft.answer,
            "usage": job.usage,
            **draft.extra,
        }
        if len(responses) == 1:
            return [make_row(draft.prompt, responses[0], meta)]
        # the item's requests are counted once, on its first row (a sum over rows stays the true cost)
        return [
            make_row(draft.prompt, text, {**meta, "solution": j, "id": f"{item['id']}-s{j}", "usage": {}})
            if j
            else make_row(draft.prompt, text, {**meta, "solution": 0})
            for j, text in enumerate(responses)
        ]


def _distinct(solutions: list[str], marker: str, cap: int) -> list[str]:
    """The responses made of `solutions` (a leading "Solution:" dropped, cut after the answer line), those whose
    normalised text differs from every earlier one, at most `cap`."""
    out, seen = [], set()
    for solution in solutions:
        if solution.lstrip().lower().startswith("solution:"):
            solution = solution.lstrip()[len("solution:") :]
        text = finish(solution, marker)
        key = quality.normalize(text)
        if key not in seen and len(out) < cap:
            seen.add(key)
            out.append(text)
    return out
