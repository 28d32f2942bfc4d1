"""Training-step cost of the equation student with a trained word-level vocabulary vs Flan-T5's 32k one.

Same architecture (conf/student/t5_equation.yaml's size), same SVAMP equation-format batch (gold
templates of the train split as targets), one thread; prints CPU seconds per optimizer step for both
vocabularies and their ratio, measured in one run. Usage: python benchmarks/bench_student_vocab.py [steps]
"""

from __future__ import annotations

import sys
import time

import torch

from mwp.data import DistilledRow, load_problems
from mwp.data.gold_templates import gold_template
from mwp.paths import default_data_dir, default_models_dir
from mwp.student.datamodule import TrainCollator, build_train_items, vocabulary_texts
from mwp.student.model import build_student

SIZE = {"d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 8}
BATCH = 32


def step_seconds(tokenizer_kind: str, rows: list[DistilledRow], steps: int) -> tuple[float, int]:
    texts = vocabulary_texts(rows, ["equation"]) if tokenizer_kind != "pretrained" else None
    bundle = build_student(
        "google/flan-t5-small",
        pretrained="never",
        fallback_config=default_models_dir() / "flan-t5-small",
        size=SIZE,
        seed=0,
        tokenizer=tokenizer_kind,
        vocab_min_frequency=2,
        training_texts=texts,
    )
    items = build_train_items(rows, ["equation"], 0, 0)[:BATCH]
    batch = TrainCollator(bundle.tokenizer, 512, 64)(items)
    optimizer = torch.optim.AdamW(bundle.model.parameters(), lr=1e-3)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            started = time.process_time()
        out = bundle.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.process_time() - started) / steps, len(bundle.tokenizer)


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    torch.set_num_threads(1)
    problems = load_problems("svamp", "train", default_data_dir())
    rows = [
        DistilledRow(p, "", "gold", 0, template=template)
        for p in problems
        if (template := gold_template(p)) is not None
    ]
    word, word_vocab = step_seconds("word", rows, steps)
    flan, flan_vocab = step_seconds("pretrained", rows, steps)
    print(f"equation student, batch {BATCH}, {steps} steps, 1 thread (CPU seconds per step):")
    print(f"  word-level vocabulary ({word_vocab} entries): {word:.3f} s")
    print(f"  Flan-T5 vocabulary ({flan_vocab} entries):   {flan:.3f} s")
    print(f"  ratio Flan-T5 / word: {flan / word:.2f}x")


if __name__ == "__main__":
    main()
