"""A same-tokenizer dense teacher for `experiment=specialize_smollm2_kd`: a trained SmolLM2 student
folder (a LoRA adapter over its base, as `experiment=specialize_smollm2` saves it) written out with the
adapter merged in, as a plain `from_pretrained` folder that `loss.signal.teacher_model` loads. The
student folder is read, never changed.

    python experiments/specialize_smollm2/make_teacher.py STUDENT_DIR OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mwp.student.model import is_adapter, load_student, save_student


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("student_dir", type=Path, help="a trained student folder (adapter or full weights)")
    parser.add_argument("out_dir", type=Path, help="where the merged from_pretrained folder goes")
    args = parser.parse_args()
    if args.out_dir.resolve() == args.student_dir.resolve():
        raise SystemExit(
            "make_teacher: out_dir must differ from student_dir (the student folder is not changed)"
        )
    model, codec, _ = load_student(args.student_dir)
    merged = is_adapter(model)
    save_student(model, codec, args.out_dir, merge=True)
    print(f"make_teacher: {'merged the adapter of ' if merged else ''}{args.student_dir} -> {args.out_dir}")


if __name__ == "__main__":
    main()
