"""The JiuZhang3.0 pipeline: math texts → an education-stage prompt → a new problem and solution from the text.

Work item k takes text `k % T` with (stage, variant) drawn from the item's own seed — one of
`[jiuzhang] stages` (or the uniform mix over grade school … AIME) and `cot` (natural-language
solution) or `tool` (a Python program). The three steps of the paper are configs of this one
pipeline (see synth/configs/jiuzhang-*.toml):

1. ``step = "distill"`` with a strong teacher endpoint: the rows are the distillation set, written
   with prompt = the synthesis instruction (text + stage) and response = the teacher's problem and
   solution — exactly the (instruction, output) pairs a synthesizer is trained on;
2. `mathforge train` on that dataset trains the small synthesizer (an ordinary SFT run);
3. ``step = "synthesize"`` with the trained synthesizer served by vLLM (openai backend) or loaded
   in-process (local backend): rows are the new problems (prompt) and solutions (response).

The education stages are the registry `EDUCATION_STAGES`, read from prompts/jiuzhang/stages.toml (name →
audience; a `[prompts] dir` may reword the audiences); the solution forms are the registry `VARIANTS`.

A texts file that is the `selection.jsonl` of a `mathforge synth select` run (a `select.json` beside it)
passes on that selection's `seeded_from_test`: texts chosen by their influence on a test split's problems
(`target.allow_test_split`) make rows contaminated for that benchmark, so the run's manifest records it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathforge.datasources import read_rows, text_field
from mathforge.errors import ConfigError, DataError
from mathforge.registry import Registry
from mathforge.synth.common import (
    PIPELINES,
    Context,
    Reject,
    check_answer,
    check_tool_output,
    consistent,
    finish,
    make_row,
    split_reply,
)
from mathforge.synth.prompts import Prompts

if TYPE_CHECKING:
    from mathforge.synth.config import SynthConfig

# education stage ([jiuzhang] stages; "uniform" = all of them) -> the built-in audience description
EDUCATION_STAGES: Registry[str] = Registry("education stage")
for _name, _audience in Prompts().stages().items():
    EDUCATION_STAGES.add(_name, _audience)


@dataclass(frozen=True)
class Variant:
    """A solution form: its prompt template, and whether the solution is a program executed in the sandbox."""

    template: str
    tool: bool


# solution form ([jiuzhang] variants) -> Variant
VARIANTS: Registry[Variant] = Registry("JiuZhang variant")
VARIANTS.add("cot", Variant("jiuzhang/cot.txt", tool=False))
VARIANTS.add("tool", Variant("jiuzhang/tool.txt", tool=True))


def load_texts(paths: list[str], field: str) -> list[tuple[str, str]]:
    """(id, text) pairs from data files (`mathforge.datasources.read_rows`); a row without a string under
    `field` is a DataError naming the file and line."""
    for name in paths:
        if not Path(name).is_file():
            raise DataError(f"jiuzhang.texts: {name!r} is not a file")
    return [(row.key, text_field(row, field)) for name in paths for row in read_rows(name)]


def inherited_provenance(paths: list[str]) -> dict[str, dict[str, Any]]:
    """The `seeded_from_test` of the `synth select` runs whose selection.jsonl is among `paths` (their
    select.json's record, each source named with the select.json it came through), in the manifests' shape."""
    seeded: dict[str, dict[str, Any]] = {}
    for name in paths:
        record = Path(name).with_name("select.json")
        if Path(name).name != "selection.jsonl" or not record.is_file():
            continue
        try:
            recorded = json.loads(record.read_text(encoding="utf-8")).get("seeded_from_test") or {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{record}: unreadable select.json ({error})") from None
        for eval_set, entry in recorded.items():
            into = seeded.setdefault(eval_set, {"sources": [], "seeds": 0})
            into["sources"] += [f"{source} (via {record})" for source in entry.get("sources", [])]
            into["seeds"] += entry.get("seeds", 0)
    return seeded


@PIPELINES.register("jiuzhang")
class JiuZhangPipeline:
    name = "jiuzhang"
    sync = False

    def __init__(self, cfg: SynthConfig) -> None:
        jz = cfg.jiuzhang
        self.cfg, self.jz, self.seed = cfg, jz, cfg.run.seed
        if not jz.texts:
            raise ConfigError("jiuzhang.texts is empty: give one or more JSONL files of math texts")
        self.texts = load_texts(jz.texts, jz.text_field)
        if not self.texts:
            raise DataError(f"jiuzhang.texts {jz.texts} hold no texts")
        stages = Prompts(cfg.prompts.dir or None, cfg.prompts.system).stages()
        chosen = list(stages) if jz.stages == ["uniform"] else list(jz.stages)
        missing = sorted(set(chosen) - set(stages))
        if missing:
            raise ConfigError(f"jiuzhang.stages: no audience for {missing} in stages.toml; have {', '.join(stages)}")
        self.stages, self.audience = chosen, stages
        self.info = {
            "texts": len(self.texts),
            "stages": chosen,
            "variants": jz.variants,
            "step": jz.step,
            "seeded_from_test": inherited_provenance(jz.texts),  # read by run.py into the manifest
        }

    def items(self) -> list[dict[str, Any]]:
        out = []
        for k in range(self.cfg.run.items):
            rng = random.Random(f"{self.seed}:jz:{k}")
            text_id, _ = self.texts[k % len(self.texts)]
            stage = self.stages[rng.randrange(len(self.stages))]
            variant = self.jz.variants[rng.randrange(len(self.jz.variants))]
            out.append(
                {
                    "id": f"jz-{k}-{text_id}-{stage}-{variant}",
                    "text": k % len(self.texts),
                    "stage": stage,
                    "variant": variant,
                }
            )
        return out

    async def process(self, item: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
        text_id, text = self.texts[item["text"]]
        variant = VARIANTS.get(item["variant"], "jiuzhang.variants")
        template = variant.template
        values = {"audience": self.audience[item["stage"]], "text": text}
        usage: dict[str, int] = {}
        k = max(1, ctx.consistency)
        offset = random.Random(f"{self.seed}:{item['id']}").randrange(1 << 20)
        out = await ctx.ask(template, n=k, usage=usage, seed_offset=offset, **values)
        drafts = [split_reply(t) for t in out.texts]
        problem = drafts[0][0]
        if not problem:
            raise Reject("the reply has no 'Problem:' part", "no problem in reply")
        solution, extra = consistent([d[1] for d in drafts], ctx) if k > 1 else (drafts[0][1], {})
        if variant.tool and "```python" not in solution:
            raise Reject("tool variant: the solution has no ```python block", "no python block")
        answer = check_answer(solution, ctx, None)
        if variant.tool and ctx.sandbox is not None:
            extra = {**extra, "tool_output": (await check_tool_output(solution, answer, ctx))[:1000]}
        if solution.lower().startswith("solution:"):
            solution = solution[len("solution:") :]
        solution = finish(solution, ctx.marker)
        meta = {
            "id": item["id"],
            "pipeline": "jiuzhang",
            "method": item["variant"],
            "stage": item["stage"],
            "seed_id": text_id,
            "difficulty": None,
            "model": out.model,
            "sampling": ctx.sampling_meta(k),
            "answer": answer,
            "usage": usage,
            "step": self.jz.step,
            **extra,
        }
        if self.jz.step == "distill":
            instruction = ctx.prompts.instruction(template, **values)  # what ctx.ask sent: one text
            return [make_row(instruction, f"Problem: {problem}\nSolution: {solution}", meta)]
        return [make_row(problem, solution, meta)]
