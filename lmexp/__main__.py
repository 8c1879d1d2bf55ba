"""``python -m lmexp [group=option ...] [key=value ...]``: train one run (or a sweep with -m)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lmexp.config import CONF_DIR
from lmexp.errors import reported_as_one_line


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from lmexp.train import train

    with reported_as_one_line():
        results = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return results["best_val_ppl"]  # what a sweeper minimises


def run() -> None:
    from lmexp.overrides import check_command_line

    with reported_as_one_line():
        check_command_line(sys.argv[1:], CONF_DIR)
    main()


if __name__ == "__main__":
    run()
