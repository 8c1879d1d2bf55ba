"""The LightningDataModule: corpus -> cached ids -> batches of contiguous windows."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from lmexp.config import check_eval_rows
from lmexp.data.cache import TokenizedCorpus, id_counts
from lmexp.data.corpora import DataConfig
from lmexp.errors import ConfigError, UserError, reached_by_every_process

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

    def __init__(self, ids: np.ndarray, rows: int, bptt: int, part: int = 0, parts: int = 1,
                 split: str = "a split", setting: str = "the batch size"):
        """``split`` and ``setting``: what the message names, e.g. "the valid split" and data.eval_batch_size."""
        length = len(ids) // rows
        if length < 2:
            raise UserError(f"{split} of {len(ids)} tokens is too short for {rows} rows; lower {setting}")
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


class ResumableLoader(DataLoader):
    """The training loader, able to start an epoch part-way: each pass first asks ``skip()`` how
    many of its batches were already trained on (by the run that a resumed run continues)."""

    def __init__(self, *args: Any, skip: Callable[[], int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self) -> Iterator:
        return self._batches()

    def _batches(self) -> Iterator:
        # A generator: nothing runs until the first batch is asked for, after Lightning has
        # restored the checkpoint and set the sampler's epoch (it makes the iterator before both).
        iterator = super().__iter__()
        for _ in range(self.skip()):  # windows sliced from memory: cheap to pass over
            next(iterator)
        yield from iterator


IGNORE = -100  # target id that the loss and the metrics skip (F.cross_entropy's ignore_index)


class BlockWindows(Dataset):
    """Fixed-length windows for attention models, which carry no state between windows.

    Training (``stride=None``): non-overlapping windows of ``block`` inputs, every token a
    target once per epoch; the loader shuffles them.

    Evaluation: the window ending at ``end`` takes ids[end - block : end] as inputs. Ends
    advance by ``stride`` (``block`` by default, the last end is the split's end), and targets
    that an earlier window already scored are masked with IGNORE, so every token but the first
    is scored exactly once. With ``stride < block`` (sliding-window evaluation) each scored
    token sees at least ``block - stride`` tokens of context:

        ids        0 1 2 3 4 5 6 7 8 9      block=4, stride=2
        window 0   0 1 2 3 -> 1 2 3 4       all scored
        window 1   2 3 4 5 -> 3 4 5 6       3 4 masked, 5 6 scored
        window 2   4 5 6 7 -> 5 6 7 8       ...
        window 3   5 6 7 8 -> 6 7 8 9       the last window ends at the split's end
    """

    def __init__(self, ids: np.ndarray, block: int, stride: Optional[int] = None, evaluation: bool = False):
        self.ids, n = ids, len(ids)
        if n < 2:
            raise UserError(f"a split of {n} tokens is too short to score")
        self.block = min(block, n - 1)
        if not evaluation:
            self.ends = list(range(self.block, n, self.block))
            self.scored_from = [0] * len(self.ends)
            return
        stride = stride or self.block
        ends = list(range(self.block, n - 1, stride))
        if not ends or ends[-1] != n - 1:
            ends.append(n - 1)
        previous = [0] + ends[:-1]
        self.ends = ends
        self.scored_from = [0] + [self.block - (end - prev) for end, prev in zip(ends[1:], previous[1:])]

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.ends[k]
        window = torch.from_numpy(np.asarray(self.ids[end - self.block : end + 1], dtype=np.int64))
        x, y = window[:-1], window[1:].clone()
        y[: self.scored_from[k]] = IGNORE
        return x, y


class SeededSampler(DistributedSampler):
    """torch's DistributedSampler, whose shuffle is seeded with seed + epoch: seed s's second epoch
    was seed s+1's first, so two runs of consecutive seeds (a comparison's seed pair) trained on
    the same orders one epoch apart. The run's seed and the epoch are mixed instead, so that each
    pair has its own order; it stays a function of the two, which a resumed run needs."""

    def __init__(self, windows: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(windows, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.run_seed = seed

    def __iter__(self) -> Iterator[int]:
        mixed = int(np.random.SeedSequence([self.run_seed, self.epoch]).generate_state(1)[0])
        self.seed = mixed - self.epoch  # what the parent seeds its generator with: seed + epoch
        return super().__iter__()


def settle_validation_interval(trainer: Optional[pl.Trainer], batches: int) -> None:
    """An integer trainer.val_check_interval (optimizer steps, which TrainerConfig.kwargs hands
    Lightning as micro-batches), where validation is per epoch of ``batches``: longer than the
    epoch's steps, refused in steps (else Lightning's ValueError, a traceback counting
    micro-batches); as long as them, with the last step short of a whole accumulation, set to
    the epoch's end, which Lightning would refuse too."""
    interval = getattr(trainer, "val_check_interval", None)
    if not isinstance(interval, int) or isinstance(interval, bool) or trainer.check_val_every_n_epoch is None:
        return
    limit, accumulate = trainer.limit_train_batches, trainer.accumulate_grad_batches
    epoch = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    steps = -(-epoch // accumulate)  # the epoch's last step may be part of an accumulation
    if interval // accumulate > steps:
        raise UserError(f"trainer.val_check_interval={interval // accumulate}: more optimizer steps than an epoch "
                        f"has ({steps}); lower it, or add +trainer.check_val_every_n_epoch=null to count the steps "
                        f"across epochs")
    if interval > epoch:  # the epoch's steps, its last one short: validated at its end
        trainer.val_check_interval = epoch


def check_one_batch(windows: BlockWindows, block_size: int, batch_size: int, world: int) -> None:
    """Training drops a last part-filled batch on each process (DDP needs equal batches), so a train
    split of fewer windows than one batch on each process would train no step at all."""
    if len(windows) // world < batch_size:
        each = f" on each of {world} processes" if world > 1 else ""
        raise UserError(f"data.batch_size={batch_size}: the train split's {len(windows.ids)} tokens make "
                        f"{len(windows)} window(s) of model.block_size={block_size} tokens, fewer than one "
                        f"batch{each}; lower data.batch_size or model.block_size, or train on more text")


def _uncounted(window: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The window with none of its targets counted."""
    x, y = window
    return x, torch.full_like(y, IGNORE)


class LMDataModule(pl.LightningDataModule):
    """A tokenized corpus as batches, laid out for the model that will read them: contiguous
    streams with a carried state for recurrent models (``block_size=None``), independent
    windows of ``block_size`` tokens for attention models.

    ``stages`` maps Lightning's evaluation stages to the corpus's splits: ``lmexp.evaluate``
    validates on any split with ``{"val": split}``.
    """

    def __init__(self, corpus: TokenizedCorpus, data: DataConfig, block_size: Optional[int] = None,
                 eval_stride: Optional[int] = None, seed: int = 0,
                 stages: Optional[dict[str, str]] = None):
        super().__init__()
        self.corpus, self.config = corpus, data
        self.block_size, self.eval_stride, self.seed = block_size, eval_stride, seed
        self.stages = stages or {"val": "valid", "test": "test"}
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, batches done) from a resumed checkpoint
        if block_size is not None and eval_stride is not None and not 1 <= eval_stride <= block_size:
            raise ConfigError(f"eval.stride={eval_stride}: must be between 1 and the model's block size ({block_size})")

    @property
    def vocab_size(self) -> int:
        return len(self.corpus.vocab)

    def _process(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _to_gpu(self) -> bool:
        """Whether batches go to a GPU: then they are made in page-locked memory, so that
        Lightning's copy (``non_blocking`` to CUDA devices) runs beside the GPU's work."""
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def windows(self, split: str, training: bool = False) -> StreamWindows:
        rank, world = self._process()
        if training:  # batch_size rows per process
            rows, parts, setting = self.config.batch_size * world, world, "data.batch_size"
            length, bptt = len(self.corpus.ids[split]) // rows, self.config.bptt
            if 2 <= length <= bptt:  # (shorter still: StreamWindows names the rows) one step an epoch, backpropagating through the whole row: not bptt's windows
                raise UserError(f"data.bptt={bptt} with data.batch_size={self.config.batch_size}: each of the {rows} "
                                f"rows of the {split} split holds {length:,} tokens, not one window of {bptt} and its "
                                f"target; lower data.bptt or data.batch_size")
        else:  # eval_batch_size rows in all, so the metric is the same for any process count
            rows, parts, setting = self.config.eval_batch_size, world, "data.eval_batch_size"
            check_eval_rows(rows, world)  # devices=auto: the count known only now
        return StreamWindows(self.corpus.ids[split], rows, self.config.bptt, rank, parts, f"the {split} split", setting)

    def blocks(self, split: str, training: bool = False) -> BlockWindows:
        return BlockWindows(self.corpus.ids[split], self.block_size, self.eval_stride, evaluation=not training)

    def loader(self, split: str, training: bool = False) -> DataLoader:
        """The layout follows the stage, not the split's name: ``lmexp.evaluate split=train``
        scores the train split as evaluation scores any split, whole and in order."""
        with reached_by_every_process(self._process()[0]):  # a split too short is so in every process
            return self._loader(split, training)

    def _loader(self, split: str, training: bool) -> DataLoader:
        # Each loader draws its workers' base seed from its own generator, not from torch's global
        # one, which then serves the model (dropout) alone: a resumed run that restores it draws
        # the same masks as the run left alone, however many loaders were made in between.
        loader = partial(ResumableLoader, skip=self._batches_done) if training else DataLoader
        loader = partial(loader, pin_memory=self._to_gpu())
        generator = torch.Generator().manual_seed(self.seed)
        if self.block_size is None:
            # Each item is already a whole batch, in order: the state carried between windows
            # needs them unshuffled, and slicing an array in memory needs no worker processes.
            return loader(self.windows(split, training), batch_size=None, shuffle=False, num_workers=0,
                          generator=generator)
        windows, (rank, world) = self.blocks(split, training), self._process()
        if training:
            check_one_batch(windows, self.block_size, self.config.batch_size, world)
            # Lightning calls set_epoch on this sampler, so each epoch has its own order.
            sampler = SeededSampler(windows, num_replicas=world, rank=rank, seed=self.seed)
            return loader(windows, batch_size=self.config.batch_size, sampler=sampler, drop_last=True,
                          generator=generator)
        # Evaluation: each process scores every world-th window; the sums are added up. A process
        # left without one (fewer windows than processes) scores a window that counts no token:
        # Lightning refuses a loader without batches, and every process must join the sums.
        share = Subset(windows, range(rank, len(windows), world))
        if not len(share) and len(windows):
            share = [_uncounted(windows[0])]
        return loader(share, batch_size=self.config.eval_batch_size, generator=generator)

    # Where training is in its epoch, kept in each checkpoint (Lightning stores a data module's
    # state_dict), so that a resumed run neither repeats nor skips a batch of the epoch it resumes.
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epoch = trainer.num_training_batches
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                "rows": self.config.batch_size, "epoch_batches": epoch if isinstance(epoch, int) else None}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self._resume_at = None
            return
        # Resumed with another micro-batch (lmexp.resume.other_batches): the same windows done,
        # in batches of the new size; at a step's end they are a whole number of them.
        rows, now = state.get("rows", self.config.batch_size), self.config.batch_size
        done, epoch = state["batches"] * rows, (state.get("epoch_batches") or 0) * rows  # windows
        if done % now or epoch % now:  # a larger micro-batch than the epoch's windows divide into
            with reached_by_every_process(self._process()[0]):
                raise UserError(f"data.batch_size={now}: the run's epochs are {epoch:,} windows on each process "
                                f"({done:,} done in this one), which micro-batches of {now} do not make; resume "
                                f"with a data.batch_size that divides {math.gcd(done, epoch):,}, e.g. {rows}")
        self._resume_at = (state["epoch"], done // now)
        if state.get("epoch_batches") and self.trainer is not None:
            # And each epoch the same windows: dropping a last part-filled batch, batches of 16
            # leave up to 15 windows out and batches of 8 up to 7, and a fraction of the batches
            # (trainer.limit_train_batches=0.05) is another count of windows too. Set on every
            # resume, as each checkpoint records it: a run resumed in batches of 8 is resumed again so.
            self.trainer.limit_train_batches = state["epoch_batches"] * rows // now

    def _batches_done(self) -> int:
        """The batches of the epoch now starting that the resumed run already trained on, once."""
        resume, self._resume_at = self._resume_at, None
        if resume and resume[0] == self.trainer.current_epoch and 0 < resume[1] < self.trainer.num_training_batches:
            return resume[1]
        return 0

    def has(self, split: str) -> bool:
        """Whether the corpus has this split (data=text may leave valid or test out)."""
        return split in self.corpus.ids

    def has_stage(self, stage: str) -> bool:
        return stage in self.stages and self.has(self.stages[stage])

    def split_stats(self, stage: str) -> Optional[dict]:
        """The tokens, words and bytes of the split a stage scores (word perplexity, bits per byte)."""
        return self.corpus.stats[self.stages[stage]] if self.has_stage(stage) else None

    def check_batches(self, trainer: pl.Trainer, resuming: bool = False) -> None:
        """Every loader the run will make, made once before it starts: a split too short for its
        batches, or a validation interval longer than an epoch, is refused before Lightning
        starts the loggers (W&B opens its run at fit's setup, and its lines and offline folder
        would outlast the refusal). A resumed run's epoch is set from its checkpoint inside fit,
        so its interval is settled there."""
        self.trainer = trainer  # as fit would set it: the process's rank and the processes
        if resuming:
            self.loader("train", training=True)
        else:
            self.train_dataloader()
        if trainer.limit_val_batches != 0:
            self.val_dataloader()
        if trainer.limit_test_batches != 0:
            self.test_dataloader()

    def train_dataloader(self) -> DataLoader:
        loader = self.loader("train", training=True)
        with reached_by_every_process(self._process()[0]):
            settle_validation_interval(self.trainer, len(loader))
        return loader

    def val_dataloader(self):
        return self.loader(self.stages["val"]) if self.has_stage("val") else []  # no validation

    def test_dataloader(self):
        return self.loader(self.stages["test"]) if self.has_stage("test") else []

    def scored_counts(self, split: str) -> np.ndarray:
        """How often each id is a target that evaluation predicts in ``split``, in the layout the
        model reads: counted a block at a time (id_counts), never copied whole."""
        ids = self.corpus.ids[split]
        if self.block_size is not None:
            return id_counts(ids[1:], self.vocab_size)
        rows = StreamWindows(ids, self.config.eval_batch_size, self.config.bptt, split=f"the {split} split",
                             setting="data.eval_batch_size").targets
        return sum((id_counts(row, self.vocab_size) for row in rows), np.zeros(self.vocab_size, dtype=np.int64))

    def unigram_perplexity(self, split: str = "test") -> float:
        """Perplexity of the train split's add-one-smoothed unigram distribution on the
        tokens a model is scored on: the floor any language model should beat."""
        counts = id_counts(self.corpus.ids["train"], self.vocab_size).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        # Each id's log-probability times how often it is scored: gathered per target instead, as
        # int64 ids and float64 log-probabilities, they took 16 bytes a token of the split.
        scored = self.scored_counts(split)
        return float(np.exp(-(scored @ logp) / scored.sum()))
