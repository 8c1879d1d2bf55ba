"""What the entry points print: Lightning's advice that does not apply to lmexp, filtered out.

Installed by each entry point when it starts (never on import), so that a program that
imports lmexp keeps its own warnings."""

from __future__ import annotations

import logging
import warnings


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    # Lightning's advice to add DataLoader workers does not apply: batches are slices of an
    # array already in memory, and workers would only add process start-up and copies.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # The CSV file goes into the run folder, which already holds Hydra's files: nothing is lost.
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    # A resumed run writes its checkpoints where it wrote them before.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # A resumed epoch does continue where its checkpoint left it: the data module (not the
    # loader, which Lightning builds before restoring a checkpoint) keeps the position.
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdverts())
    # A log line that a full disk refuses must not bury the run's own one-line error under
    # logging's tracebacks; the line still reaches the console.
    logging.raiseExceptions = False
