"""From Large to Tiny's refinement on SVAMP with the recorded PaLM-540B teacher: what each method recovers.

    .venv/bin/python benchmarks/bench_refine.py                          # enumeration + middle model
    .venv/bin/python benchmarks/bench_refine.py --methods enumeration --limit 100
    .venv/bin/python benchmarks/bench_refine.py --methods teacher_feedback --feedback-teacher smollm2

Distillation reads each PaLM chain-of-thought completion's final expression as its equation
(`experiment=fltt_svamp`, `stage.extraction=equation`); the training problems it leaves without a
verified pair are given to each method in turn, each starting from the same distilled rows. Printed
and written to `<out>/bench_refine.json`: problems failed by distillation, and per method and round
the problems attempted and recovered, candidates tried and per second, wall time, teacher calls, and
the semantic precision of the recovered templates (share equivalent to SVAMP's gold equation; SVAMP's
gold equations are never trained on). Teacher feedback needs a live teacher (the recorded one cannot
answer new prompts); `--feedback-teacher smollm2` uses SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from mwp.config import register_resolvers
from mwp.stages import load_config
from mwp.stages.distill import run_distill
from mwp.stages.refine import run_refine
from tests.helpers import compose_config

METHODS = ("enumeration", "middle_model", "teacher_feedback")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", default="enumeration,middle_model", help=f"comma-separated, of {METHODS}"
    )
    parser.add_argument(
        "--out", default="outputs/bench_refine", help="folder for the distill and refine outputs"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="first N training problems (default: all 800)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="refine.max_rounds (middle model)")
    parser.add_argument(
        "--middle-steps", type=int, default=600, help="refine.middle_model.max_steps per round"
    )
    parser.add_argument(
        "--beams", type=int, default=10, help="num_beams = num_return_sequences (middle model)"
    )
    parser.add_argument(
        "--middle-model",
        default=None,
        help="student option of the middle model (e.g. t5_equation), or 'student' for the run's student; "
        "default: refine=middle_model's (SmolLM2-135M-Instruct with LoRA)",
    )
    parser.add_argument("--max-ops", type=int, default=3, help="refine.enumeration.max_ops")
    parser.add_argument(
        "--feedback-teacher", default="smollm2", help="teacher option re-prompted by feedback"
    )
    parser.add_argument("--feedback-limit", type=int, default=None, help="refine.limit for teacher feedback")
    parser.add_argument("--accelerator", default="cpu", help="trainer.accelerator of the middle model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_resolvers()
    out = Path(args.out)
    base = ["experiment=fltt_svamp", f"refine.max_rounds={args.rounds}", *args.overrides]
    if args.limit:
        base.append(f"dataset.limit={args.limit}")
    distill_dir = out / "distill"
    config = load_config(compose_config(base, run_dir=out))
    start = time.perf_counter()
    distilled = run_distill(config, distill_dir)
    report: dict = {
        "distill": distilled.to_json(),
        "distill_s": round(time.perf_counter() - start, 2),
        "methods": {},
    }
    print(
        f"distill ({distilled.to_json().get('teacher') or config.teacher.name}): "
        f"{distilled.problems_kept}/{distilled.problems_seen} problems with a verified equation"
    )
    for method in args.methods.split(","):
        overrides = [*base, f"refine={method}"]
        if method == "middle_model":
            overrides += [
                f"refine.middle_model.max_steps={args.middle_steps}",
                f"refine.middle_model.num_beams={args.beams}",
                f"refine.middle_model.num_return_sequences={args.beams}",
                f"trainer.accelerator={args.accelerator}",
                "trainer.enable_progress_bar=false",
            ]
            if args.middle_model == "student":
                overrides.append("refine.middle_model.student=null")
            elif args.middle_model:
                overrides.append(f"student@refine.middle_model.student={args.middle_model}")
        elif method == "enumeration":
            overrides.append(f"refine.enumeration.max_ops={args.max_ops}")
        elif method == "teacher_feedback":
            overrides += [
                f"+teacher@refine.teacher_feedback.teacher={args.feedback_teacher}",
                # the completions stay with this benchmark's outputs, not in the user's teacher cache
                f"refine.teacher_feedback.teacher.cache_path={out.resolve() / 'feedback_cache.jsonl'}",
            ]
            if args.feedback_limit:
                overrides.append(f"refine.limit={args.feedback_limit}")
        method_config = load_config(compose_config(overrides, run_dir=out))
        result = run_refine(method_config, distill_dir, out / f"refine_{method}")
        stats = result.stats
        report["methods"][method] = stats["methods"][method]
        report["distill_precision"] = stats["distill"]["precision"]
        summary = stats["methods"][method]
        print(
            f"{method} ({summary.get('by', method)}): recovered {summary['recovered']}/{result.failed} failed problems, "
            f"precision {summary['precision']['precision']}, wall {summary['wall_s']}s"
        )
        for r in summary["rounds"]:
            print(
                f"  round {r['round']}: attempted {r['attempted']}, recovered {r['recovered']}, "
                f"remaining {r['remaining']}, candidates {r['candidates']} ({r['candidates_per_s']}/s), "
                f"train {r['train_s']}s, search {r['search_s']}s, teacher calls {r['teacher_calls']}, "
                f"precision {r['precision'].get('precision')}"
            )
    print(f"distilled templates: precision {report.get('distill_precision')}")
    (out / "bench_refine.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
