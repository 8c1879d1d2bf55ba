"""One run: build it, fit, test the best checkpoint, write results.json."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lmexp import slurm
from lmexp.atomic import write_text
from lmexp.callbacks import Interrupted, TokenThroughput, ending_on_signals, stopping_on_signals
from lmexp.config import plain_config
from lmexp.errors import UserError, not_written
from lmexp.loggers import close as close_loggers
from lmexp.loggers import drop_rows_from
from lmexp.memory import is_out_of_memory, out_of_memory
from lmexp.models import training_flops
from lmexp.resume import KEPT_BATCHES, REQUESTED, continuing_the_sweep
from lmexp.run import Run, build_callbacks
from lmexp.slurm import check_no_lightning_checkpoint

log = logging.getLogger("lmexp")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train, validate and test one configuration; return (and write) results.json's dict."""
    started = time.perf_counter()
    run, loggers, trainer, resumed_at = _assemble(cfg, run_dir)
    resumed = (str(run.settings.resume), resumed_at) if run.settings.resume else None
    try:
        with stopping_on_signals(trainer, resumed):
            return _fit_and_test(run, loggers, trainer, run_dir, started)
    except BaseException:
        # A sweep's next job starts its own W&B run, not this one's. Best effort: closing must not
        # hide the error that stopped the run (a full disk fails the loggers' last writes too).
        with contextlib.suppress(Exception):
            close_loggers(loggers, exit_code=1)
        raise


def _fit_and_test(run: Run, loggers: list, trainer: pl.Trainer, run_dir: Path, started: float) -> dict:
    settings, names, module, datamodule, resume = (run.settings, run.settings.names, run.module, run.datamodule,
                                                   run.settings.resume)
    params, params_no_embedding = run.parameters
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except Interrupted as stop:
        return _interrupted(stop, trainer, run, loggers, run_dir, started)
    except Exception as e:  # the device's memory or the disk, told in one line; anything else as it is
        if is_out_of_memory(e):
            raise out_of_memory(run.plan, settings, trainer.global_step, run_dir,
                                evaluating=module.evaluating) from None
        written = not_written(e)
        if written is None:
            raise
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise written.advising(f"make room, then continue with: python -m lmexp resume={run_dir}") from None
        raise written from None
    throughput = _throughput(trainer)
    # Read now: testing the best checkpoint loads the callbacks' state too, its counts at that step.
    trained_tokens, tokens_per_sec = (throughput.tokens, throughput.tokens_per_sec) if throughput else (None, None)
    earlier = _earlier(trainer)
    checkpoints = trainer.checkpoint_callback
    best = (checkpoints.best_model_path or None) if checkpoints else None
    best_val = float(checkpoints.best_model_score) if best and checkpoints.best_model_score is not None else None
    tested, test = time.perf_counter(), {}
    try:  # a signal here stops the run as at a step: resumed, it has only this left to do
        if best_val is None and not module.best_val and trainer.limit_val_batches != 0 and datamodule.has("valid"):
            # No validation ran in fit (max_steps and max_tokens stop through one, callbacks.StepBudget and
            # TokenBudget): e.g. +trainer.check_val_every_n_epoch larger than the run.
            trainer.validate(module, datamodule=datamodule, verbose=False)
            best_val = module.scored["val"]["ppl"]
        tested = time.perf_counter()
        # A corpus without a test split (data.split=[0.9, 0.1, 0]) is not tested, nor is a run told
        # to score no test batch (trainer.limit_test_batches=0).
        if trainer.limit_test_batches != 0 and datamodule.has("test"):
            trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
            test = module.scored["test"]
    except Interrupted as stop:
        return _interrupted(stop, trainer, run, loggers, run_dir, started)
    except Exception as e:  # the final validation's or the test's evaluation batch too large
        if is_out_of_memory(e):
            raise out_of_memory(run.plan, settings, trainer.global_step, run_dir, evaluating=True) from None
        raise
    test_seconds = time.perf_counter() - tested  # loading the best checkpoint included

    results = {
        "status": "finished",
        "model": names["model"],
        "data": names["data"],
        "tokenizer": names["tokenizer"],
        "params": params,
        "params_without_embeddings": params_no_embedding,
        "sizing": run.sizing,  # the width model.target_params* chose, and its counts; null when off
        **{f"embedding_{k}": v for k, v in module.embedding_stats.items()},
        "vocab_size": datamodule.vocab_size,
        "batch_size": settings.data.batch_size,  # rows per micro-batch on each process, as run
        "accumulate_grad_batches": settings.trainer.accumulate_grad_batches,
        "memory_estimate_bytes": run.plan.estimate.total if run.plan else None,
        "best_val_ppl": module.best_val.get("ppl", best_val),  # float64; the logged copy is float32
        "test_ppl": test.get("ppl"),
        "test_loss": test.get("loss"),
        "test_tokens": int(test["tokens"]) if test else None,
        "test_word_ppl": test.get("word_ppl"),
        "test_bpb": test.get("bpb"),
        "val_tokens": int(module.best_val["tokens"]) if "tokens" in module.best_val else None,
        "val_word_ppl": module.best_val.get("word_ppl"),
        "val_bpb": module.best_val.get("bpb"),
        "test_unigram_ppl": datamodule.unigram_perplexity("test") if test else None,
        "train_tokens_per_sec": tokens_per_sec,
        "train_tokens": trained_tokens,  # the training batches' tokens, every process's
        # an estimate (lmexp/models: 6 x parameters without embeddings, plus attention, per token)
        "train_flops": training_flops(module.model, trained_tokens) if throughput else None,
        "test_tokens_per_sec": test["tokens"] / test_seconds if test else None,
        "wall_time_s": earlier + time.perf_counter() - started,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "nonfinite_skipped": module.nonfinite_skipped,
        "best_checkpoint": best,
        "resumed_from": resume,
        "seed": settings.seed,
    }
    for callback in trainer.callbacks:  # what a callback adds (callbacks.pruning: a pruned trial's status)
        results.update(callback.results() if callable(getattr(callback, "results", None)) else {})
    for logger in loggers if test and trainer.is_global_zero else []:
        logger.log_metrics({"test/unigram_ppl": results["test_unigram_ppl"]}, step=trainer.global_step)
    return _report(results, trainer, loggers, run_dir, summary(results, run_dir))


def _assemble(cfg: DictConfig, run_dir: Path) -> tuple[Run, list, pl.Trainer, Optional[int]]:
    """The run, its loggers and its trainer, and the step a resumed run continues from; every
    check that needs the corpus, the model or Lightning happens here, before the first step."""
    run = Run.from_config(cfg)
    names, datamodule = run.settings.names, run.datamodule
    if run.module.embedding_stats:
        log.info("embedding: %s", run.module.embedding_stats)
    params, params_no_embedding = run.parameters
    log.info("model: %s, %s parameters (%s without embeddings), vocabulary %d", names["model"], f"{params:,}",
             f"{params_no_embedding:,}", datamodule.vocab_size)

    callbacks = build_callbacks(run.settings, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume, step = run.settings.resume, None
    check_no_lightning_checkpoint(run_dir, resume)
    if resume:
        checkpoint = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
        trained = checkpoint.get("hyper_parameters", {}).get("config", {}).get("model")
        if trained is not None and trained != run.module.hparams.config["model"]:  # before metrics.csv is cut
            raise UserError(f"resume={run_dir}: the model in its config.yaml is not the checkpoint's ({resume}): "
                            f"was config.yaml edited? restore the file the run wrote")
        step = checkpoint["global_step"]
        log.info("resuming %s from step %d (%s)", run_dir, step, resume)
        keep_batches(run_dir, run.module.hparams.config)
        drop_rows_from(run_dir, step)  # the steps after the checkpoint are done again
    else:  # a resumed run keeps the config it was started with
        OmegaConf.save(OmegaConf.create(run.module.hparams.config), run_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(plain_config(cfg)), run_dir / REQUESTED)
    loggers = run.loggers(run_dir, resumed_at=step)
    trainer = run.trainer(run_dir, callbacks=callbacks, loggers=loggers)
    datamodule.check_batches(trainer, resuming=bool(resume))
    return run, loggers, trainer, step


def keep_batches(run_dir: Path, config: dict) -> None:
    """A run resumed in other batches (lmexp.resume.other_batches) writes them, and the
    evaluation limits converted with them, into its config.yaml, which is otherwise the one it
    was started with: resumed again, it goes on in them, not in the batches that ran out of memory."""
    stored, run = OmegaConf.load(run_dir / "config.yaml"), OmegaConf.create(config)
    changed = [key for key in KEPT_BATCHES if OmegaConf.select(stored, key) != OmegaConf.select(run, key)]
    if changed:
        for key in changed:
            OmegaConf.update(stored, key, OmegaConf.select(run, key))
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(stored))


def _throughput(trainer) -> Optional[TokenThroughput]:
    return next((c for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)


def _earlier(trainer) -> float:
    """The seconds a resumed run spent before this segment (0 for a run not resumed)."""
    throughput = _throughput(trainer)
    return throughput.earlier_wall_time_s if throughput else 0.0


def _interrupted(stop: Interrupted, trainer, run: Run, loggers: list, run_dir: Path, started: float) -> dict:
    """results.json of a run stopped by a signal: where it stopped and how to continue it."""
    ending_on_signals()
    exit_code = 128 + stop.signum  # what a shell reports for a process a signal ended: 130, 143
    params, params_no_embedding = run.parameters
    # What a finished run's results.json says of its units and size, so that a report or summary
    # ranks a stopped run among runs of other tokenizers by bits per byte, as it does finished ones.
    results = {"status": "interrupted", "signal": signal.Signals(stop.signum).name, "exit_code": exit_code,
               "model": run.settings.names["model"], "data": run.settings.names["data"],
               "tokenizer": run.settings.names["tokenizer"], "vocab_size": len(run.module.hparams.vocab),
               "params": params, "params_without_embeddings": params_no_embedding, "steps": stop.step,
               # begun, as a finished run's counts them: a stop mid-epoch leaves current_epoch where it began
               "epochs": trainer.fit_loop.epoch_progress.total.started, "checkpoint": stop.checkpoint,
               "best_val_ppl": run.module.best_val.get("ppl"), "val_word_ppl": run.module.best_val.get("word_ppl"),
               "val_bpb": run.module.best_val.get("bpb"),
               "wall_time_s": _earlier(trainer) + time.perf_counter() - started,
               "resumed_from": run.settings.resume, "seed": run.settings.seed}
    sweep = continuing_the_sweep()
    how = ("no checkpoint was written (callbacks.checkpoint is off)" if trainer.checkpoint_callback is None
           else sweep if sweep
           else f"continue with: python -m lmexp resume={run_dir}" if stop.checkpoint
           else "it stopped before its first checkpoint: start it again")
    requeueing = stop.signum == slurm.WARNING and stop.checkpoint and slurm.in_batch_job()
    if requeueing and not slurm.restart_continues(run_dir):
        requeueing = False  # it would start afresh elsewhere, and this run's checkpoint be left behind
        how += (" (not requeued: this job's command line, started again, would not find this folder; name "
                "it there without ${now:...}, e.g. hydra.run.dir=outputs/slurm/$SLURM_JOB_ID)")
    if requeueing:
        how = f"requeueing SLURM job {slurm.job_id()}, which continues from {stop.checkpoint}"
    results = _report(results, trainer, loggers, run_dir,
                      f"lmexp: {results['signal']} at step {stop.step}: stopped; {how}", exit_code)
    # Last: SLURM stops this job once it is requeued, so everything is written first.
    failed = slurm.requeue() if requeueing and trainer.is_global_zero else None
    if failed:
        log.error("%s; continue with: python -m lmexp resume=%s", failed, run_dir)
    return results


def _report(results: dict, trainer, loggers: list, run_dir: Path, line: str, exit_code: int = 0) -> dict:
    """results.json written (by the first process), the loggers closed, ``line`` printed."""
    if trainer.is_global_zero:
        write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        close_loggers(loggers, results, exit_code=exit_code)
        print(line, flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # A DDP run's process group, closed before exit: alive, its threads can race the
        # interpreter's teardown and abort a finished run. The next run of a sweep makes its own.
        torch.distributed.destroy_process_group()
    return results


def summary(r: dict, run_dir: Path) -> str:
    val = f"{r['best_val_ppl']:.2f}" if r["best_val_ppl"] is not None else "n/a"
    speed = f"{r['train_tokens_per_sec']:,.0f} tok/s" if r["train_tokens_per_sec"] else "n/a"
    test = (f"test ppl {r['test_ppl']:.2f} (unigram {r['test_unigram_ppl']:.2f})" if r["test_ppl"] is not None
            else "no test split")
    epochs = f"{r['epochs']} epoch{'' if r['epochs'] == 1 else 's'}"
    return (f"lmexp: {r['model']} on {r['data']}: {test}, best val ppl {val}, {epochs}, "
            f"{r['steps']} steps, {speed}, {r['wall_time_s']:.0f} s -> {run_dir}")
