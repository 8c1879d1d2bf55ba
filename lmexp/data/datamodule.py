"""The LightningDataModule: corpus -> cached ids -> batches of contiguous windows."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lmexp.data.cache import TokenizedCorpus, tokenize_corpus
from lmexp.data.corpora import DataConfig, corpus_spec
from lmexp.data.tokenizers import tokenizer_spec
from lmexp.errors import UserError

log = logging.getLogger(__name__)


class StreamWindows(Dataset):
    """Windows over a token stream laid out in rows, so a recurrent state can carry over.

    The split's ids are cut into ``rows`` equal streams; row b of window k+1 continues row b
    of window k. With rows=4 and bptt=2 (the last N mod rows ids are dropped):

        ids    a b c d e f g h i j k l m n o p q r s t u v w x
        rows   a b c d e f          inputs   [a b] [c d] [e]
               g h i j k l                   [g h] [i j] [k]
               m n o p q r          targets  [b c] [d e] [f]
               s t u v w x                   [h i] [j k] [l]
                                              ...

    Every id but the first of each row is predicted exactly once. Under DDP each process
    takes its own block of rows (``part`` of ``parts``), so the windows, and the tokens
    scored, are the same for 1 and N processes.
    """

    def __init__(self, ids: np.ndarray, rows: int, bptt: int, part: int = 0, parts: int = 1):
        length = len(ids) // rows
        if length < 2:
            raise UserError(f"a split of {len(ids)} tokens is too short for {rows} rows; lower the batch size")
        per_part = rows // parts
        self.rows = ids[: rows * length].reshape(rows, length)[part * per_part : (part + 1) * per_part]
        self.bptt = bptt

    def __len__(self) -> int:
        return math.ceil((self.rows.shape[1] - 1) / self.bptt)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = k * self.bptt
        stop = min(start + self.bptt, self.rows.shape[1] - 1)
        window = torch.from_numpy(np.asarray(self.rows[:, start : stop + 1], dtype=np.int64))
        return window[:, :-1], window[:, 1:]  # inputs, targets: (rows, T)

    @property
    def targets(self) -> np.ndarray:
        return self.rows[:, 1:]


class LMDataModule(pl.LightningDataModule):
    def __init__(self, corpus_name: str, data: DataConfig, tokenizer_name: str, tokenizer_config, cache_dir: Path):
        super().__init__()
        self.corpus_name, self.config, self.cache_dir = corpus_name, data, Path(cache_dir)
        tokenizer_cls, _ = tokenizer_spec(tokenizer_name)
        self.tokenizer = tokenizer_cls(tokenizer_config)
        self.corpus: Optional[TokenizedCorpus] = None

    def prepare_data(self) -> None:
        self.setup()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.corpus is None:
            text = corpus_spec(self.corpus_name).load(self.config, self.cache_dir)
            self.corpus = tokenize_corpus(text, self.tokenizer, self.cache_dir)

    @property
    def vocab_size(self) -> int:
        assert self.corpus is not None, "call setup() first"
        return len(self.corpus.vocab)

    def _process(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def windows(self, split: str) -> StreamWindows:
        assert self.corpus is not None, "call setup() first"
        rank, world = self._process()
        if split == "train":  # batch_size rows per process
            rows, parts = self.config.batch_size * world, world
        else:  # eval_batch_size rows in all, so the metric is the same for any process count
            rows, parts = self.config.eval_batch_size, world
            if rows % world:
                raise UserError(f"data.eval_batch_size={rows} must be a multiple of the number of processes ({world})")
        return StreamWindows(self.corpus.ids[split], rows, self.config.bptt, rank, parts)

    def _loader(self, split: str) -> DataLoader:
        # Each item is already a whole batch, in order: the state carried between windows
        # needs them unshuffled, and slicing an array in memory needs no worker processes.
        return DataLoader(self.windows(split), batch_size=None, shuffle=False, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def unigram_perplexity(self, split: str = "test") -> float:
        """Perplexity of the train split's add-one-smoothed unigram distribution on the
        tokens a model is scored on: the floor any language model should beat."""
        assert self.corpus is not None
        counts = np.bincount(self.corpus.ids["train"], minlength=self.vocab_size).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        targets = StreamWindows(self.corpus.ids[split], self.config.eval_batch_size, self.config.bptt).targets
        return float(np.exp(-logp[np.asarray(targets, dtype=np.int64)].mean()))
