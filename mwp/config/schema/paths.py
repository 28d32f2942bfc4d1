"""`paths`: where data, models and run folders are."""

from __future__ import annotations

from mwp.config.schema.base import Section, help_field


class PathsConfig(Section):
    data_dir: str = help_field(
        help="bundled datasets and teacher outputs ($MWP_DATA_DIR, else ../shared/data)"
    )
    models_dir: str = help_field(
        help="local model configs/tokenizers ($MWP_MODELS_DIR, else ../shared/models)"
    )
    log_dir: str = help_field("outputs", help="where run folders are created")
    output_dir: str = help_field(help="this run's folder (set by Hydra)")
