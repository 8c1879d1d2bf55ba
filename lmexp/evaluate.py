"""``python -m lmexp.evaluate ckpt=PATH [split=test] [data=NAME] [data.key=value ...]``

Perplexity of a saved checkpoint on any split of any corpus, scored with the checkpoint's
own vocabulary and tokenizer; prints one JSON object. The checkpoint alone is enough: the
files the model was trained from need not exist any more.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from lmexp.cli import existing_checkpoint, parse_command_line
from lmexp.console import quiet_lightning
from lmexp.data.corpora import SPLITS
from lmexp.errors import ConfigError, reported_as_one_line

OPTIONS = {"ckpt": ..., "split": "test"}
# What may change between training and evaluation: the text and how it is read, never the model.
GROUPS = ("data", "tokenizer", "eval", "trainer", "paths")


def evaluate(ckpt: str, split: str = "test", overrides: list[str] = ()) -> dict:
    if split not in SPLITS:
        raise ConfigError(f"split={split} is not a split; choose one of: {', '.join(SPLITS)}")
    existing_checkpoint(ckpt)
    from lmexp.run import Run  # torch and Lightning: seconds, so not before the command line is checked

    run = Run.from_checkpoint(ckpt, overrides, split)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = run.trainer(Path(scratch), callbacks=[], loggers=[], devices=1, num_nodes=1, strategy="auto",
                              enable_model_summary=False, enable_progress_bar=False, limit_val_batches=None)
        (metrics,) = trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    names = run.settings.names
    return {"checkpoint": str(ckpt), "model": names["model"], "data": names["data"], "split": split,
            "ppl": metrics["val/ppl"], "loss": metrics["val/loss"], "tokens": int(metrics["val/tokens"]),
            "word_ppl": metrics["val/word_ppl"], "bpb": metrics["val/bpb"],
            "unigram_ppl": run.datamodule.unigram_perplexity(split)}


def main(argv: list[str]) -> None:
    quiet_lightning()
    with reported_as_one_line():
        options, overrides = parse_command_line(argv, OPTIONS, GROUPS)
        result = evaluate(options["ckpt"], options["split"], overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
