"""`mwp-config`: every config key with its value and help, or a config checked without running it.

mwp-config                              # the default config, one key a line
mwp-config experiment=demo teacher=openai  # the composed config of these overrides
mwp-config --check trainer.precision=16-mixed   # exit 2 and say what is wrong
mwp-config --groups                     # the options of every config group
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from mwp.config import ConfigError, describe, register_resolvers
from mwp.config.hydra_errors import explain, is_composition_error
from mwp.paths import REPO_ROOT
from mwp.stages import load_config

CONF_DIR = REPO_ROOT / "conf"


def group_options(conf_dir: Path = CONF_DIR, *, nested: bool = False) -> dict[str, list[str]]:
    """Config group -> its options (file stems), as `mwp group=option` accepts them; `nested` adds
    groups inside groups (`hydra/launcher`)."""
    found: dict[str, list[str]] = {}
    for group in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        name = group.relative_to(conf_dir).as_posix()
        options = sorted(p.stem for p in group.glob("*.yaml"))
        if options and (nested or "/" not in name):
            found[name] = options
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mwp-config", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as given to `mwp`")
    parser.add_argument("--check", action="store_true", help="only validate; print nothing on success")
    parser.add_argument("--groups", action="store_true", help="list the config groups and their options")
    args = parser.parse_args(argv)
    if args.groups:
        for group, options in group_options(nested=True).items():
            print(f"{group}: {', '.join(options)}")
        return
    register_resolvers()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(args.overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = "<run folder>"
        settings = load_config(cfg)
    except Exception as err:
        if isinstance(err, ConfigError):
            lines = str(err).strip().splitlines()
        elif is_composition_error(err):
            lines = explain(err, args.overrides)
        else:
            raise
        for line in lines:
            print(f"mwp-config: error: {line}", file=sys.stderr)
        sys.exit(2)
    if args.check:
        return
    rows = [(key, repr(value), text) for key, value, text in describe(settings)]
    width = min(48, max(len(k) + len(v) + 3 for k, v, _ in rows))
    for key, value, text in rows:
        left = f"{key} = {value}"
        print(f"{left:<{width}}  # {text}" if text else left)


if __name__ == "__main__":
    main()
