"""``python -m lmexp.evaluate ckpt=PATH [split=test] [data=NAME] [data.key=value ...]``

Perplexity of a saved checkpoint on any split of any corpus, scored with the checkpoint's
own vocabulary and tokenizer settings; prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys

import pytorch_lightning as pl
import yaml
from omegaconf import OmegaConf

from lmexp.checkpoint import load_module
from lmexp.cli import parse_arguments
from lmexp.config import CONF_DIR, load_settings
from lmexp.data.corpora import SPLITS
from lmexp.data.datamodule import LMDataModule
from lmexp.errors import ConfigError, reported_as_one_line
from lmexp.models import block_size
from lmexp.train import cache_dir

OPTIONS = {"ckpt": ..., "split": "test"}


def with_overrides(config: dict, overrides: list[str]) -> dict:
    """The run's config with ``data=NAME`` (another corpus) and ``group.key=value`` applied."""
    cfg = OmegaConf.create(config)
    for arg in overrides:
        key, _, raw = arg.partition("=")
        if "." not in key:
            option = CONF_DIR / key / f"{raw}.yaml"
            if not option.exists():
                choices = ", ".join(sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml")))
                raise ConfigError(f"{key}={raw} is not an option; choose one of: {choices}")
            cfg[key] = OmegaConf.load(option)
        else:
            if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
                raise ConfigError(f"{key} is not a setting of this checkpoint's config")
            OmegaConf.update(cfg, key, yaml.safe_load(raw))
    return OmegaConf.to_container(cfg, resolve=True)


def evaluate(ckpt: str, split: str = "test", overrides: list[str] = ()) -> dict:
    if split not in SPLITS:
        raise ConfigError(f"split={split} is not a split; choose one of: {', '.join(SPLITS)}")
    module = load_module(ckpt)
    config = dict(module.hparams.config)
    # Tokens are cached where this machine keeps them, not where the training machine did.
    config["paths"] = {"cache_dir": os.environ.get("LMEXP_CACHE", "~/.cache/lmexp")}
    cfg = OmegaConf.create(with_overrides(config, list(overrides)))
    settings = load_settings(cfg)
    names = settings.names
    data = LMDataModule(names["data"], settings.data, names["tokenizer"], settings.tokenizer,
                        cache_dir(cfg), eval_stride=settings.eval.stride,
                        vocab=module.hparams.vocab, tokenizer_state=module.hparams.get("tokenizer_state"))
    data.setup()
    if not data.has(split):
        raise ConfigError(f"split={split}: data={names['data']} has no {split} split (its fraction is 0)")
    data.block_size = block_size(module.model)
    module.split_stats = {"val": data.corpus.stats[split]}
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False, enable_model_summary=False,
                         enable_progress_bar=False, use_distributed_sampler=False)
    (metrics,) = trainer.validate(module, dataloaders=data.loader(split), verbose=False)
    return {"checkpoint": str(ckpt), "model": names["model"], "data": names["data"], "split": split,
            "ppl": metrics["val/ppl"], "loss": metrics["val/loss"], "tokens": int(metrics["val/tokens"]),
            "word_ppl": metrics["val/word_ppl"], "bpb": metrics["val/bpb"],
            "unigram_ppl": data.unigram_perplexity(split)}


def main(argv: list[str]) -> None:
    with reported_as_one_line():
        options, overrides = parse_arguments(argv, OPTIONS, allow_overrides=True)
        result = evaluate(options["ckpt"], options["split"], overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
