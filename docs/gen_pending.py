"""Stand in for recipe pages that are written on other branches, so the site builds strictly before they land.

A page listed here that exists in docs/ is left alone (the real page wins); one that does not gets a
short generated page pointing at its configs. Delete an entry once its page is in docs/.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

DOCS = Path(__file__).resolve().parent

PENDING = {
    "recipes/fu2023.md": (
        "Fu et al. (2023): specialising Flan-T5 on GSM8K",
        "`conf/experiment/fu2023_gsm8k.yaml` holds the paper's settings every size shares, "
        "`conf/experiment/fu2023_flan_t5_{base,large,xl,xxl}.yaml` one per student size, and "
        "`conf/loss/fu2023.yaml` the paper's distribution matching, each setting with the authors' "
        "file and line. See [the losses](../concepts/signals-and-losses.md) and "
        "[scale-out](../how-to/scale-out.md) meanwhile.",
    ),
    "recipes/large_to_tiny.md": (
        "From Large to Tiny and the refinement ablation",
        "`stage=fltt` runs distill → refine → train → evaluate; `conf/experiment/fltt_*.yaml` are the "
        "experiments, `make ablation` (`experiments/refinement_ablation/run.sh`) the refinement "
        "ablation. `make demo`'s equation half is this route in small "
        "([Getting started](../getting-started.md#the-demo)).",
    ),
}

for page, (title, body) in PENDING.items():
    if not (DOCS / page).is_file():
        with mkdocs_gen_files.open(page, "w") as handle:
            handle.write(f"# {title}\n\n!!! note\n    This page is being written.\n\n{body}\n")
