"""``python -m lmexp.evaluate ckpt=PATH [split=test] [data=NAME] [data.key=value ...]``
``python -m lmexp.evaluate pretrained=FOLDER [split=test] [data=NAME] [eval.stride=N ...]``

Perplexity of a saved checkpoint on any split of any corpus, scored with the checkpoint's
own vocabulary and tokenizer; prints one JSON object. ``pretrained=`` scores a local Hugging Face
GPT-2 folder as it is (zero-shot), with the tokenizer files in that folder. One process, or as
many as ``trainer=ddp_cpu`` (or ``trainer=ddp``...) asks for: the sums of the processes' shares
give the same number. The checkpoint alone is enough: the files the model was trained from need
not exist any more.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from lmexp.cli import check_model_options, parse_command_line, parse_overrides
from lmexp.console import quiet_lightning
from lmexp.data.corpora import SPLITS
from lmexp.errors import ConfigError, reported_as_one_line
from lmexp.stops import stopped_as_one_line

OPTIONS = {"ckpt": None, "pretrained": None, "split": "test"}
# What may change between training and evaluation: the text and how it is read, never the model.
GROUPS = ("data", "tokenizer", "eval", "trainer", "paths")
# The checkpoint's trainer settings are the training machine's (trainer=gpu, ddp): this one's instead.
THIS_MACHINE = ["trainer.accelerator=auto", "trainer.devices=1", "trainer.num_nodes=1", "trainer.strategy=auto"]


def evaluate(ckpt: Optional[str] = None, split: str = "test", overrides: list[str] = (),
             pretrained: Optional[str] = None) -> dict:
    if split not in SPLITS:
        raise ConfigError(f"split={split} is not a split; choose one of: {', '.join(SPLITS)}")
    check_model_options(ckpt, pretrained)
    import torch

    from lmexp.run import Run  # torch and Lightning: seconds, so not before the command line is checked

    # One process on this machine's device unless a trainer= preset says otherwise (trainer=ddp_cpu);
    # a trainer.* setting on the command line goes on top. Set before the run is built, whose
    # data.eval_batch_size=auto shares memory and windows out among the processes.
    if not any(o.key_or_group == "trainer" for o in parse_overrides(list(overrides))):
        overrides = [*THIS_MACHINE, *overrides]
    run = Run.from_checkpoint(ckpt, overrides, split) if ckpt else Run.from_pretrained(pretrained, overrides, split)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = run.trainer(Path(scratch), callbacks=[], loggers=[], enable_model_summary=False,
                              enable_progress_bar=False, limit_val_batches=None)
        trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    metrics = run.module.scored["val"]  # float64, not the logged float32 copies
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # before exit: see train._report
    names = run.settings.names
    model = {"checkpoint": str(ckpt)} if ckpt else {"pretrained": str(pretrained)}
    # The share of the split's tokens outside the checkpoint's vocabulary, each read as <unk>:
    # another corpus's text can score well by predicting <unk> where its own words were.
    stats = run.datamodule.corpus.stats[split]
    return {**model, "model": names["model"], "data": names["data"], "split": split,
            "ppl": metrics["ppl"], "loss": metrics["loss"], "tokens": int(metrics["tokens"]),
            "oov_rate": stats["unk"] / stats["tokens"] if stats["tokens"] else 0.0,
            "word_ppl": metrics.get("word_ppl"), "bpb": metrics.get("bpb"),
            "unigram_ppl": run.datamodule.unigram_perplexity(split), "processes": trainer.world_size,
            "first_process": trainer.is_global_zero}


def main(argv: list[str]) -> None:
    quiet_lightning()
    with stopped_as_one_line("lmexp.evaluate", "nothing was written"), reported_as_one_line():
        options, overrides = parse_command_line(argv, OPTIONS, GROUPS)
        result = evaluate(options["ckpt"], options["split"], overrides, options["pretrained"])
    if result.pop("first_process"):  # under DDP, every process scored its share; the first one says the sum
        print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
