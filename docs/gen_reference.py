"""Generate the reference pages at build time (mkdocs-gen-files): config keys, command lines, Python API.

Nothing here is written by hand: the config pages come from the schema (`mwp.config.reference`) and
the files in `conf/`, the command-line pages from each command's `--help`, the API pages from the
docstrings (mkdocstrings). A changed help string changes the page on the next build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document the checkout being built, not an installed copy

from mwp.config.reference import KeyReference, config_reference  # noqa: E402
from mwp.config.schema import (  # noqa: E402
    TEACHER_SCHEMAS,
    CacheConfig,
    DataConfig,
    DatasetConfig,
    EvaluationConfig,
    LossConfig,
    LossTerm,
    OptimConfig,
    PathsConfig,
    PromptConfig,
    RefineConfig,
    RunConfig,
    StageConfig,
    StudentConfig,
    TeacherConfig,
    TrainerConfig,
)

CONF = ROOT / "conf"
SUMMARY: list[str] = ["* [Overview](index.md)"]

# (group, schema, what the page is about); the order of the nav
GROUPS = [
    ("paths", PathsConfig, "where data, models and run folders are"),
    ("dataset", DatasetConfig, "the training dataset, its files and the evaluation sets"),
    ("teacher", TeacherConfig, "where completions come from: the backend and its sampling parameters"),
    ("prompt", PromptConfig, "what a live teacher is asked"),
    ("student", StudentConfig, "the model that is trained, and how it is built"),
    ("loss", LossConfig, "the weighted loss terms and where teacher distributions come from"),
    ("data", DataConfig, "how distilled rows become training examples and batches"),
    ("optim", OptimConfig, "the optimiser and its schedule"),
    ("trainer", TrainerConfig, "the Lightning Trainer"),
    ("evaluation", EvaluationConfig, "which models are scored, in which formats, and BIG-Bench Hard"),
    ("refine", RefineConfig, "From Large to Tiny's refinement step"),
    ("stage", StageConfig, "which steps a run takes and the inputs of earlier runs"),
    ("cache", CacheConfig, "the stage cache"),
]
# Groups the schema does not check key by key: options only.
OPTION_GROUPS = [
    ("experiment", "a named experiment: overrides only what differs (`# @package _global_`)"),
    ("callbacks", "Lightning callbacks, each a `_target_` entry"),
    ("logger", "experiment loggers, each a `_target_` entry"),
    ("debug", "shrinks everything for smoke runs and tests"),
    ("hparams_search", "a sweep (Hydra's basic sweeper or Optuna)"),
    ("hydra/launcher", "where a multirun's jobs run"),
    ("student/peft", "adapters added to any student"),
]


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "&#124;").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def code(text: str) -> str:
    return f"`{text}`" if text and "|" not in text and "`" not in text else cell(text)


def key_table(rows: list[KeyReference]) -> str:
    lines = ["| key | type | default | allowed | help |", "|---|---|---|---|---|"]
    for row in rows:
        key = f"**`{row.key}`**" if not row.section else f"`{row.key}`"
        help_text = cell(row.help) or ("(passed through unchecked)" if row.type == "any" else "")
        if row.operational:
            help_text += " *(operational: not part of the stage cache's key)*"
        lines.append(
            f"| {key} | {cell(row.type)} | {code(row.default)} | {cell(row.allowed)} | {help_text} |"
        )
    return "\n".join(lines)


def header_comment(path: Path) -> str:
    """The comment block a config file starts with, as one paragraph."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text != "@package _global_":
            lines.append(text)
    return " ".join(lines).strip()


def options(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def options_section(group: str) -> str:
    files = options(group)
    if not files:
        return ""
    parts = [
        f"## Options: `{group}=<option>`\n",
        "| option | what it is (the file's own comment) |",
        "|---|---|",
    ]
    parts += [f"| `{p.stem}` | {cell(header_comment(p)) or '—'} |" for p in files]
    parts.append("")
    for path in files:
        body = path.read_text(encoding="utf-8").rstrip()
        parts.append(f'??? example "conf/{group}/{path.name}"\n')
        parts.append("    ```yaml")
        parts += [f"    {line}" if line else "" for line in body.splitlines()]
        parts.append("    ```\n")
    return "\n".join(parts)


def config_block(top_key: str) -> str:
    """The lines of conf/config.yaml under a top-level key, with the comments just above it."""
    lines = (CONF / "config.yaml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"{top_key}:"):
            start = index
            while start > 0 and lines[start - 1].startswith("#"):
                start -= 1
            end = index + 1
            while end < len(lines) and (not lines[end] or lines[end][0] in " #"):
                end += 1
            while end > index + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
                end -= 1
            return "\n".join(lines[start:end])
    return ""


def write(path: str, text: str) -> None:
    with mkdocs_gen_files.open(f"reference/{path}", "w") as handle:
        handle.write(text.rstrip() + "\n")
    mkdocs_gen_files.set_edit_path(f"reference/{path}", "gen_reference.py")


def group_page(group: str, schema: type, about: str) -> str:
    rows = config_reference(schema, f"{group}.")
    parts = [f"# `{group}`: {about}\n", GENERATED]
    doc = (schema.__doc__ or "").strip()
    if doc and not doc.startswith(("A config group", "Fields every backend")):
        parts.append(f"{doc}\n")
    if group == "teacher":
        parts.append(teacher_section(rows))
    else:
        if group == "refine":
            parts.append(
                "`refine.middle_model.student` takes the keys of [`student`](student.md) "
                "(null: the run's own student); they are not repeated here.\n"
            )
            rows = [r for r in rows if not r.key.startswith("refine.middle_model.student.")]
        parts.append("## Keys\n")
        parts.append(key_table(rows) + "\n")
    if group == "loss":
        parts.append("## `loss.terms[i]`: one weighted term\n")
        parts.append(
            "Each entry of `loss.terms` is a `LossTerm` "
            "([LossTerm][mwp.config.schema.loss_terms.LossTerm]); a bad entry fails naming "
            "`loss.terms[i].field`.\n"
        )
        parts.append(key_table(config_reference(LossTerm, "loss.terms[i].")) + "\n")
    block = config_block(group)
    if block:
        parts.append(f"## In `conf/config.yaml`\n\n```yaml\n{block}\n```\n")
    parts.append(options_section(group))
    return "\n".join(parts)


def teacher_section(common: list[KeyReference]) -> str:
    parts = [
        "The backend is chosen by `teacher._target_` (each `conf/teacher/` option names one); its schema "
        "checks the keys below. A backend without a schema of its own gets the common keys checked and "
        "passes the rest to its constructor.\n",
        "## Keys every backend has\n",
        key_table(common) + "\n",
    ]
    by_target: dict[str, list[str]] = {}
    for path in options("teacher"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("_target_:"):
                by_target.setdefault(line.split(":", 1)[1].strip(), []).append(path.stem)
    common_keys = {row.key for row in common}
    for target, schema in TEACHER_SCHEMAS.items():
        name = target.rsplit(".", 1)[1]
        used_by = ", ".join(f"`teacher={o}`" for o in by_target.get(target, [])) or "no option yet"
        rows = [r for r in config_reference(schema, "teacher.") if r.key not in common_keys]
        parts.append(f"## {name}\n")
        parts.append(f"`_target_: {target}` — options: {used_by}.\n")
        parts.append(key_table(rows) + "\n" if rows else "No keys beyond the common ones.\n")
    return "\n".join(parts)


GENERATED = (
    '!!! info "Generated"\n'
    "    This page is generated from the schema (`mwp/config/schema/`) and the files in `conf/` on "
    "every build. *default* is the schema's, used when no config file sets the key; the options "
    "below set most keys (`mwp-config [OVERRIDES]` prints the composed values).\n"
)


def run_page() -> str:
    group_names = {g for g, _, _ in GROUPS}
    rows = [
        r
        for r in config_reference(RunConfig)
        if "." not in r.key
        and r.key not in group_names
        and r.key not in ("experiment", "hparams_search", "debug")
    ]
    parts = [
        "# Run-level keys and the other groups\n",
        GENERATED,
        "## Keys at the top of the config\n",
        key_table(rows) + "\n",
        "`experiment`, `hparams_search` and `debug` are group slots, empty unless chosen on the command "
        "line; their options are below.\n",
    ]
    for group, about in OPTION_GROUPS:
        files = options(group)
        if not files:
            continue
        parts.append(f"## `{group}`: {about}\n")
        parts.append("| option | what it is (the file's own comment) |\n|---|---|")
        parts += [f"| `{p.stem}` | {cell(header_comment(p)) or '—'} |" for p in files]
        parts.append("")
    return "\n".join(parts)


def config_pages() -> None:
    index = [
        "# Configuration reference\n",
        "`conf/config.yaml` composes one option of each group (`group=option` on the command line); "
        "every key is then checked against one pydantic schema per group before the first stage runs "
        "(see [Errors and reliability](../../how-to/errors.md)). Each page lists the group's keys with "
        "type, default, allowed values and help, its options, and the YAML of each option.\n",
        "| group | what it picks |",
        "|---|---|",
    ]
    SUMMARY.append("* Configuration")
    SUMMARY.append("    * [Overview](config/index.md)")
    SUMMARY.append("    * [Run-level keys, other groups](config/run.md)")
    for group, schema, about in GROUPS:
        write(f"config/{group}.md", group_page(group, schema, about))
        SUMMARY.append(f"    * [{group}](config/{group}.md)")
        index.append(f"| [`{group}`]({group}.md) | {about} |")
    index.append(
        "| [run-level keys, other groups](run.md) | seed, tags, loggers, callbacks, experiments, sweeps, launchers |"
    )
    write("config/index.md", "\n".join(index))
    write("config/run.md", run_page())


# (page, title, command, what it is); the commands run from the repository root
COMMANDS = [
    ("mwp", "mwp", ["-m", "mwp.cli", "--help"], "run the pipeline (Hydra)"),
    ("mwp-config", "mwp-config", ["-m", "mwp.cli.config", "--help"], "print or check a config"),
    ("mwp-cache", "mwp-cache", ["-m", "mwp.cli.cache", "--help"], "list, show and prune the stage cache"),
    ("mwp-cache", "mwp-cache ls", ["-m", "mwp.cli.cache", "ls", "--help"], ""),
    ("mwp-cache", "mwp-cache show", ["-m", "mwp.cli.cache", "show", "--help"], ""),
    ("mwp-cache", "mwp-cache rm", ["-m", "mwp.cli.cache", "rm", "--help"], ""),
    ("mwp-report", "mwp-report", ["-m", "mwp.report", "--help"], "compare runs side by side"),
    ("mwp-judge", "mwp-judge", ["-m", "mwp.verify.judge", "--help"], "score any model's outputs"),
    ("batch", "python -m mwp.teachers.batch", ["-m", "mwp.teachers.batch", "--help"], "export batch files"),
    ("batch", "python -m mwp.teachers.batch export", ["-m", "mwp.teachers.batch", "export", "--help"], ""),
    ("shards", "python -m mwp.data.shards", ["-m", "mwp.data.shards", "--help"], "merge shard artifacts"),
    ("shards", "python -m mwp.data.shards merge", ["-m", "mwp.data.shards", "merge", "--help"], ""),
]


def help_text(args: list[str]) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "COLUMNS": "100",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout.rstrip()


def cli_pages() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda c: help_text(c[2]), COMMANDS))
    pages: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    for (page, title, _, about), output in zip(COMMANDS, outputs, strict=True):
        if page not in pages:
            titles[page] = title
            pages[page] = [
                f"# `{title}`: {about}\n",
                '!!! info "Generated"\n    The output of the command\'s `--help`, captured on every build.\n',
            ]
        pages[page].append(f"## `{title} --help`\n\n```text\n{output}\n```\n")
    SUMMARY.append("* Command line")
    for page, parts in pages.items():
        write(f"cli/{page}.md", "\n".join(parts))
        SUMMARY.append(f"    * [{titles[page]}](cli/{page}.md)")


# The Python API: one page per module of these packages, in data-flow order
API_PACKAGES = [
    "mwp.cli",
    "mwp.pipeline",
    "mwp.stages",
    "mwp.stage_cache",
    "mwp.distill",
    "mwp.refinement",
    "mwp.evaluation",
    "mwp.student",
    "mwp.signals",
    "mwp.teachers",
    "mwp.config",
    "mwp.data",
    "mwp.verify",
    "mwp.report",
    "mwp.lineage",
    "mwp.loggers",
    "mwp.digest",
    "mwp.progress",
    "mwp.runtime",
    "mwp.paths",
    "mwp.objective",
]


def modules_of(name: str) -> list[str]:
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return [name]
    found = []
    for child in path.rglob("*.py"):
        if child.name == "__init__.py":
            found.append(".".join(child.parent.relative_to(ROOT).parts))
        elif not child.stem.startswith("_"):
            found.append(".".join(child.with_suffix("").relative_to(ROOT).parts))
    return sorted(found, key=lambda module: (module != name, module))


def api_pages() -> None:
    SUMMARY.append("* Python API")
    for package in API_PACKAGES:
        modules = modules_of(package)
        if len(modules) == 1:
            write(f"api/{package}.md", f"::: {package}\n")
            SUMMARY.append(f"    * [{package}](api/{package}.md)")
            continue
        SUMMARY.append(f"    * {package}")
        for module in modules:
            write(f"api/{module}.md", f"::: {module}\n")
            label = module if module == package else module.removeprefix(f"{package}.")
            SUMMARY.append(f"        * [{label}](api/{module}.md)")


def index_page() -> None:
    write(
        "index.md",
        "# Reference\n\n"
        "Generated on every build, so it cannot drift from the code:\n\n"
        "- [Configuration](config/index.md): every key of every group from the schema, with its type, "
        "default, allowed values and help, and every option file in `conf/`.\n"
        "- Command line: each command's `--help` ([mwp](cli/mwp.md), [mwp-config](cli/mwp-config.md), "
        "[mwp-cache](cli/mwp-cache.md), [mwp-report](cli/mwp-report.md), [mwp-judge](cli/mwp-judge.md), "
        "[batch export](cli/batch.md), [shard merge](cli/shards.md)).\n"
        "- Python API: the docstrings of every module, one page each "
        "(start at [mwp.pipeline](api/mwp.pipeline.md) and [mwp.stages.base](api/mwp.stages.base.md)).\n",
    )


index_page()
config_pages()
cli_pages()
api_pages()
with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
    summary.write("\n".join(SUMMARY) + "\n")
