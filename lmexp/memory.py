"""The memory a run needs, estimated before its first step; the micro-batch that fits.

Training holds the weights, their gradients, the optimizer's state and what one micro-batch's
forward pass saves for the backward pass; evaluation holds the weights, gradients and state too
(they stay between steps) and what one evaluation batch's pass holds at its peak (measured:
``evaluation_bytes``). What a forward pass saves is
not guessed from a formula: one row is run through the model under
``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd keeps, so the
count follows the model as it is (the attention kernel that its dropout selects, a recurrent
model's gates, the output layer's log-probabilities). Rows are independent, so a micro-batch
saves that many times one row's bytes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten
# Private, but the base of torch's own FlopCounterMode; the public alternative, the profiler's
# memory events, records every allocation of the pass to be replayed afterwards.
from torch.utils._python_dispatch import TorchDispatchMode

from lmexp import fused_loss
from lmexp.config import rows_per_step
from lmexp.errors import ConfigError, OutOfMemory
from lmexp.sizing import counted_at_depth, depth_of, shape_of

log = logging.getLogger("lmexp")
GiB = 2**30


@dataclass(frozen=True)
class Estimate:
    """Bytes one process needs, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    per_row: int  # what one training row saves for the backward pass, with its output layer's gradients
    eval_per_row: int  # the most one evaluation row holds at once (measured)
    batch: int  # training rows per micro-batch (per process)
    eval_batch: int  # evaluation rows per batch (per process)
    tokens: int  # tokens per row
    eval_fixed: int = 0  # what an evaluation batch holds whatever its rows (the fused loss's chunks)
    train_fixed: int = 0  # what a training step holds whatever its rows (the fused loss's output-layer gradient and chunks)

    @property
    def activations(self) -> int:
        return self.per_row * self.batch + self.train_fixed

    @property
    def evaluation(self) -> int:
        return self.eval_per_row * self.eval_batch + self.eval_fixed

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + max(self.activations, self.evaluation)

    def with_batch(self, batch: int) -> "Estimate":
        return replace(self, batch=batch)

    def describe(self) -> str:
        return (f"{gib(self.total)} (weights {gib(self.weights)}, gradients {gib(self.gradients)}, optimizer "
                f"state {gib(self.optimizer)}, activations of {self.batch} rows of {self.tokens} tokens "
                f"{gib(self.activations)}, evaluation batch of {self.eval_batch} rows {gib(self.evaluation)})")


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def saved_bytes(model: nn.Module, rows: int, tokens: int, vocab_size: int,
                autocast: Optional[torch.dtype] = None, fused: bool = False) -> int:
    """What the forward pass and loss of ``rows`` rows of ``tokens`` tokens keep for backward, plus
    the gradients of the logits and log-probabilities that backward makes first (the peak of
    a step is at its start). Parameters are not counted: they are the weights. ``fused``: the
    loss of lmexp/fused_loss.py, which keeps no logits but the gradient of the output layer's
    input, made in the forward pass (and of its weight: not per row, counted by ``estimate``)."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    # Each storage once (q, k and v are views of one matmul's output). Nothing is kept alive:
    # the pass is only counted, no backward follows, and a storage freed early may hand its
    # address to a new one, told apart by the weak reference to the old one having died.
    seen: dict[int, weakref.ref] = {}
    total = 0

    def pack(t: torch.Tensor) -> None:
        nonlocal total
        storage = t.untyped_storage()
        key = storage._cdata
        if key in parameters or (key in seen and seen[key]() is storage):
            return
        seen[key] = weakref.ref(storage)
        total += storage.nbytes()

    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (rows, tokens), device=device)
    # What a forward pass leaves on the modules (the training flag; a recurrent model's
    # activations for AR/TAR, which hold the graph) is put back as it was.
    attributes = [(module, dict(vars(module))) for module in model.modules()]
    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None), \
                torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            if fused:
                model.features(ids)
            else:
                logits, _ = model(ids)
                F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
    finally:
        for module, kept in attributes:
            vars(module).clear()
            vars(module).update(kept)
    if fused:
        return total + rows * tokens * model.head.in_features * 4
    return total + 2 * rows * tokens * vocab_size * 4


class _LiveBytes(TorchDispatchMode):
    """The bytes of the tensors an operation makes while they live, and their most at once. Each
    storage counts once (views share it) from the operation that makes it until it is freed,
    told by its weak reference's callback."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._alive and self._alive[key]() is storage:
                continue
            size = storage.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            self._alive[key] = weakref.ref(storage, lambda _, key=key, size=size: self._freed(key, size))
        return out

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self._alive.pop(key, None)


def evaluation_bytes(model: nn.Module, tokens: int, vocab_size: int, autocast: Optional[torch.dtype],
                     fused: bool) -> tuple[int, int]:
    """What an evaluation batch of rows of ``tokens`` tokens holds at once: (bytes per row, bytes a
    batch holds whatever its rows). Measured, not the logits' size: one row's forward pass under
    inference_mode, each tensor counted while it lives. Without gradients a forward pass frees
    each layer's intermediates as it goes, and on a CPU those (attention's scores, the MLP's
    tanh-GELU terms) outweigh the logits: GPT-2 small, 256 tokens, held 36.8 MiB a row against
    its logits' 49 MiB. With the fused loss the row's pass stops at the output layer's input, and
    the loss holds its chunks, counted once (fused_loss.held_chunk_bytes)."""
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, tokens), device=device)
    counter = _LiveBytes()
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.TransformerEncoderLayer's inference fast path is one operation to the counter, which
    # would not see its attention weights and feed-forward intermediates: measure the layer's ops.
    torch.backends.mha.set_fastpath_enabled(False)
    model.eval()
    try:
        with torch.inference_mode(), counter, \
                torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            if fused:  # the output layer's input: its chunks are counted below, once a batch
                model.features(ids)
            else:
                fused_loss.evaluation_nll(model, ids, ids, None, fused=False)
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    chunks = fused_loss.held_chunk_bytes(vocab_size) if fused else 0
    # Under inference_mode the counter sees cross_entropy as one operation, not the row's
    # log-probabilities (the logits' size) it makes and holds beside the logits.
    log_probs = 0 if fused else tokens * vocab_size * 4
    return counter.peak + log_probs, chunks


def activation_bytes(model: nn.Module, tokens: int, vocab_size: int, autocast: Optional[torch.dtype],
                     fused: bool = False) -> int:
    """A row's activations at a step's peak: what its forward pass keeps for backward. With GPT-2's
    gradient checkpointing that is each block's input, plus the one block that backward recomputes
    and the gradients it makes: about three times that block's share of the whole forward pass,
    as measured (tests/test_memory.py, 12 layers: 595 to 631 MiB above the weights)."""
    kept = saved_bytes(model, 1, tokens, vocab_size, autocast, fused)
    config = getattr(model, "config", None)
    if not getattr(config, "gradient_checkpointing", False):
        return kept
    model.config = replace(config, gradient_checkpointing=False)
    try:
        whole = saved_bytes(model, 1, tokens, vocab_size, autocast, fused)
    finally:
        model.config = config
    return kept + 3 * whole // config.resolved()[0]


def autocast_dtype(precision: object) -> Optional[torch.dtype]:
    """The dtype Lightning's mixed precision computes in; None for full precision."""
    text = str(precision)
    if "bf16" in text:
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return None


def parameter_dtype(precision: object) -> torch.dtype:
    """The dtype Lightning keeps the weights in: 64-true's float64, 16-true's and bf16-true's half
    precision; float32 for 32-true and the mixed precisions, which compute in half precision
    under autocast but keep the weights in float32."""
    text = str(precision)
    return {"64": torch.float64, "64-true": torch.float64, "16-true": torch.float16,
            "bf16-true": torch.bfloat16}.get(text, torch.float32)


def held_bytes(params: int, optimizer_state_copies: int, precision: object = "32-true",
               processes: int = 1) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state): the bytes ``params`` parameters hold from the first
    step to the last, whatever the batch. DDP keeps a second copy of the gradients in its
    communication buckets."""
    weights = params * parameter_dtype(precision).itemsize
    return weights, weights * (2 if processes > 1 else 1), weights * optimizer_state_copies


def estimate(model: nn.Module, optimizer_state_copies: int, tokens: int, vocab_size: int, batch: int,
             eval_batch: int, precision: object = "32-true", processes: int = 1, fused: bool = False) -> Estimate:
    """One process's needs for micro-batches of ``batch`` rows and evaluation batches of
    ``eval_batch`` rows (each process's for a model that reads windows; over all processes for a
    recurrent model's streams) of ``tokens`` tokens: the weights, gradients and optimizer state
    (``held_bytes``) and the larger of the two batches'. The fused loss (``fused``) keeps a copy
    of the output layer's gradients, from the forward pass to the backward pass, and the chunks of
    logits it works through. The model is
    measured as it is built, in float32; a precision that keeps the weights in another dtype
    (Lightning converts the model when training starts) scales them, and a wider one the
    activations too (a narrower one keeps a float32 copy of the logits for the loss: not scaled)."""
    weight_bytes, gradient_bytes, optimizer_bytes = held_bytes(sum(p.numel() for p in model.parameters()),
                                                                optimizer_state_copies, precision, processes)
    size = parameter_dtype(precision).itemsize
    fused_bytes = sum(p.numel() * size for p in model.head.parameters()) + \
        fused_loss.held_chunk_bytes(vocab_size) if fused else 0
    wider = max(size, 4) // 4
    eval_row, eval_fixed = evaluation_bytes(model, tokens, vocab_size, autocast_dtype(precision), fused)
    return Estimate(weights=weight_bytes, gradients=gradient_bytes, train_fixed=fused_bytes, optimizer=optimizer_bytes,
                    per_row=wider * activation_bytes(model, tokens, vocab_size, autocast_dtype(precision), fused),
                    eval_per_row=wider * eval_row, eval_fixed=eval_fixed, batch=batch,
                    # A recurrent model's streams are shared out; each process batches its windows by eval_batch.
                    eval_batch=math.ceil(eval_batch / processes) if getattr(model, "stateful", False) else eval_batch,
                    tokens=tokens)


@dataclass(frozen=True)
class Device:
    name: str  # what a message calls it: "this machine", "GPU 0 (...)"
    available: int  # bytes free now
    shared_by: int  # processes drawing on the same memory
    host: bool  # the CPU's memory, where this process has built the model already

    def budget(self, est: Estimate) -> int:
        """What each process may use: the free memory shared, plus, on the host, the weights
        this process has already built (counted in the estimate, no longer free)."""
        return (self.available + (est.weights if self.host else 0)) // self.shared_by


def device_of(trainer) -> Optional[Device]:
    """The memory a run with these trainer settings would draw on; None where lmexp cannot tell
    (an accelerator other than CPU and CUDA)."""
    if trainer.on_gpu():
        if not torch.cuda.is_available():
            return None  # Lightning refuses the accelerator itself, naming it
        free, _ = torch.cuda.mem_get_info(0)
        return Device(f"GPU 0 ({torch.cuda.get_device_name(0)})", free, 1, host=False)
    if trainer.accelerator in ("cpu", "auto"):
        return Device("this machine", host_available(), trainer.processes(exact=True), host=True)
    return None


def host_available() -> int:
    """Memory the kernel could give this process now: MemAvailable, or less if a cgroup's limit
    (a container, a SLURM job) leaves less."""
    available = _meminfo("MemAvailable") or _meminfo("MemFree") or 0
    limit, used = _read_int(Path("/sys/fs/cgroup/memory.max")), _read_int(Path("/sys/fs/cgroup/memory.current"))
    if limit is not None and used is not None:
        available = min(available, max(0, limit - used))
    return available


def _meminfo(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # absent, or "max"
        return None


def resident() -> int:
    """This process's resident memory now, in bytes (0 where /proc is absent)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_resident() -> int:
    """This process's peak resident memory in bytes (VmHWM) since it began, or since the last
    :func:`reset_peak_resident` (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_resident() -> None:
    """The peak starts again from the present size (Linux's clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def largest_batch(est: Estimate, budget: int, divides: int) -> Optional[int]:
    """The largest micro-batch that divides ``divides`` (the rows of one optimizer step on this
    process) and fits ``budget`` bytes; None if not even one row fits."""
    fitting = [b for b in range(1, divides + 1) if divides % b == 0 and est.with_batch(b).total <= budget]
    return max(fitting) if fitting else None


# Under DDP the other processes build the run again; they take the first process's plan from
# here rather than measure memory that the first one is already using.
PLAN_VARIABLE = "LMEXP_BATCH_PLAN"
AUTO_SHARE = 0.8  # data.batch_size=auto plans within this share of the memory: the estimate is not exact


@dataclass(frozen=True)
class BatchPlan:
    batch: int  # data.batch_size
    accumulate: int  # trainer.accumulate_grad_batches
    estimate: Estimate
    device: Optional[Device]
    eval_batch: int  # data.eval_batch_size


def largest_eval_batch(est: Estimate, budget: Optional[int], processes: int, windows: int) -> int:
    """``data.eval_batch_size=auto``: the most windows a batch (each process's: each scores every
    processes-th window, in batches of this size) whose evaluation fits ``budget`` beside the
    weights, gradients and optimizer state, and no more than a process has of the longest
    evaluation split's ``windows`` (one batch then scores its share). At least one."""
    most = math.ceil(windows / processes)
    if budget is not None:
        room = budget - (est.weights + est.gradients + est.optimizer + est.eval_fixed)
        most = min(most, room // max(est.eval_per_row, 1))
    return max(1, most)


def takes_fused(model: nn.Module, trainer) -> bool:
    """Whether the run's steps will take the fused loss (``fused_loss.applies``, asked of the model
    before Lightning converts it: a precision that does, 64-true, takes the ordinary loss)."""
    precision = trainer.lightning_precision()
    return fused_loss.applies(model, trainer.fused_loss, trainer.compile, autocast_dtype(precision) is not None) \
        and parameter_dtype(precision) == torch.float32


def scoring_eval_batch(model: nn.Module, settings, vocab_size: int, tokens: Optional[int],
                       windows: Optional[int]) -> int:
    """``data.eval_batch_size=auto`` for a model scored, not trained (``lmexp.evaluate``), whose
    windows are ``tokens`` long: the weights alone beside the evaluation of ``windows`` windows."""
    # A recurrent model's auto is refused with the settings (config.load_settings).
    if windows is None:  # a split too short to score, which the data module reports
        return 1
    trainer = settings.trainer
    est = estimate(model, 0, tokens, vocab_size, 1, 1, trainer.lightning_precision(), 1, takes_fused(model, trainer))
    est = replace(est, gradients=0)
    device = device_of(trainer)
    budget = None if device is None else int(device.budget(est) * AUTO_SHARE)
    batch = largest_eval_batch(est, budget, trainer.processes(exact=True), windows)
    log.info("evaluation batch: %d windows on each process (data.eval_batch_size=auto; the split has %d)",
             batch, windows)
    return batch


def plan_batch(model: nn.Module, settings, vocab_size: int, tokens: int, key: str,
               eval_windows: Optional[int] = None) -> BatchPlan:
    """The micro-batch and accumulation the settings ask for (``data.batch_size=auto``: the
    largest micro-batch that fits and divides ``data.effective_batch_size``) and the evaluation
    batch (``data.eval_batch_size=auto``: :func:`largest_eval_batch`, ``eval_windows`` the longest
    evaluation split's windows), refused in one line, before anything runs, when the estimate
    exceeds the memory of the device the run would use. ``key`` names the run, so that a DDP
    process takes its own run's plan."""
    data, trainer = settings.data, settings.trainer
    world = trainer.processes(exact=True)
    rows = rows_per_step(data, trainer, world)  # per process, None: whatever batch_size gives
    precision = trainer.lightning_precision()
    fused = takes_fused(model, trainer)

    auto_eval = data.eval_batch_size == "auto"  # a recurrent model's is refused with the settings
    eval_batch = 1 if auto_eval else data.eval_batch_size  # auto's: chosen below

    def estimate_for(batch: int, window: int = tokens) -> Estimate:
        return estimate(model, settings.optimizer.state_copies, window, vocab_size, batch, eval_batch,
                        precision, world, fused)

    inherited = os.environ.get(PLAN_VARIABLE, "").split(":")
    if len(inherited) == 4 and inherited[0] == key and os.environ.get("LOCAL_RANK", "0") != "0":
        batch, accumulate, eval_batch = int(inherited[1]), int(inherited[2]), int(inherited[3])
        return BatchPlan(batch, accumulate, estimate_for(batch), None, eval_batch)
    auto = data.batch_size == "auto"
    est = estimate_for(1 if auto else data.batch_size)
    device = device_of(trainer)
    budget = None if device is None else device.budget(est)
    if auto_eval and eval_windows is not None:  # None: no evaluation split, and one window is as good as any
        eval_batch = largest_eval_batch(est, None if budget is None else int(budget * AUTO_SHARE), world, eval_windows)
        est = replace(est, eval_batch=eval_batch)
        log.info("evaluation batch: %d windows on each process (data.eval_batch_size=auto; the longest evaluation "
                 "split has %d)", eval_batch, eval_windows)
    if auto:
        batch = rows if budget is None else largest_batch(est, int(budget * AUTO_SHARE), rows)
        if batch is None:
            raise _refusal("data.batch_size=auto", est, device, budget, estimate_for, model, settings)
    else:
        batch = data.batch_size
    accumulate = rows // batch if rows else trainer.accumulate_grad_batches
    est = est.with_batch(batch)
    where = f"; {gib(device.available)} available on {device.name}" if device else ""
    log.info("memory: about %s per process%s", est.describe(), where)
    if rows:
        log.info("batch: %d rows per step on each process: micro-batches of %d%s, %d accumulated", rows, batch,
                 " (data.batch_size=auto)" if auto else "", accumulate)
    if budget is not None and est.total > budget:
        raise _refusal(f"data.batch_size={batch}", est, device, budget, estimate_for, model, settings)
    os.environ[PLAN_VARIABLE] = f"{key}:{batch}:{accumulate}:{eval_batch}"
    return BatchPlan(batch, accumulate, est, device, eval_batch)


def _refusal(setting: str, est: Estimate, device: Device, budget: int, estimate_for, model: nn.Module,
             settings) -> ConfigError:
    """One line: the estimate, the memory there is, and the settings that would fit
    (``estimate_for(batch, window)``: the run's estimate at another micro-batch or window)."""
    data, trainer = settings.data, settings.trainer
    rows = rows_per_step(data, trainer, trainer.processes(exact=True)) or est.batch * trainer.accumulate_grad_batches
    fits, spare = [], int(budget * AUTO_SHARE)  # what fits with the room auto leaves
    batch = largest_batch(est, spare, rows)
    if batch is not None and batch < est.batch:
        same = f" (the same {rows} rows per step)" if rows != batch else ""
        fits.append(f"data.batch_size={batch}" + ("" if data.effective_batch_size else
                                                  f" trainer.accumulate_grad_batches={rows // batch}") + same)
    window = "data.bptt" if getattr(model, "stateful", False) else "model.block_size"
    shorter = est.tokens // 2
    while shorter >= 8:
        if estimate_for(est.batch, shorter).total <= spare:
            fits.append(f"{window}={shorter}")
            break
        shorter //= 2
    if autocast_dtype(trainer.lightning_precision()) is None and not device.host and torch.cuda.is_bf16_supported():
        # Autocast keeps about half of what a step saves in bfloat16 (norms and the loss stay in float32).
        if replace(est, per_row=est.per_row // 2).total <= spare:
            fits.append("trainer.precision=bf16-mixed")
    if not getattr(model, "stateful", False) and est.evaluation > est.activations:
        # The evaluation batch is the larger part: fewer windows a batch score the same perplexity.
        room = spare - (est.weights + est.gradients + est.optimizer + est.eval_fixed)
        smaller = min(est.eval_batch - 1, room // max(est.eval_per_row, 1))
        if smaller >= 1 and replace(est, eval_batch=smaller).total <= spare:
            fits.append(f"data.eval_batch_size={smaller}")
    if data.effective_batch_size and data.batch_size != "auto" and batch is not None:
        fits.append("data.batch_size=auto")
    advice = f"settings that fit with a fifth to spare: {', '.join(fits)}" if fits else \
        "no micro-batch, window or precision fits: choose a smaller model"
    each = f" for each of {device.shared_by} processes" if device.shared_by > 1 else ""
    return ConfigError(f"{setting}: the run needs about {est.describe()} per process, but {device.name} has "
                       f"{gib(budget)} free{each}; {advice}")


def check_model_fits(settings, vocab_size: int) -> None:
    """Refuse, before it is built, a model whose weights, gradients and optimizer state alone need
    more memory than the device the run would use has free. Built, such a model fills the memory
    layer by layer until the kernel ends the process without a word (GPT-2 of 100,000 layers, 8,192
    wide: 104 s) or holds most of it for as long as anyone waits (an LSTM of a million layers: 21
    of 23 GB after 14 minutes); the micro-batch's check (``plan_batch``) comes only after it is
    built. The parameters are counted from the settings
    (``lmexp.sizing.counted_at_depth``: two small models on the meta device, whatever the depth).
    A pretrained GPT-2's weights are the size of its file, and are not counted here."""
    model, trainer = settings.model, settings.trainer
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(PLAN_VARIABLE):
        return  # a DDP process the first one started, after it judged the model with this one's share counted
    device, shape = device_of(trainer), shape_of(model)
    # A model added since (README: Adding an option) is left to the micro-batch's check, once built.
    if device is None or shape is None or getattr(model, "pretrained", None) is not None:
        return
    named = " ".join(f"model.{key}={value}" for key, value in shape.items())
    free = device.available // device.shared_by  # nothing of the model is built yet
    each = f" for each of {device.shared_by} processes" if device.shared_by > 1 else ""
    narrower = ", ".join(f"model.{key}" for key in list(shape)[1:])
    smaller = f"make it narrower ({narrower}) or set model.target_params"
    setting, depth = depth_of(model)
    try:
        count = counted_at_depth(model, vocab_size)
        params = count(depth)
    except RuntimeError as e:  # a tensor of more than 2^63 elements, which torch cannot even shape
        if "overflow" not in str(e):
            raise
        raise ConfigError(f"{named}: model={model.name} has a tensor of more than 2^63 elements, more memory than "
                          f"any machine has ({device.name} has {gib(free)} free{each}); {smaller}") from None
    precision = trainer.lightning_precision()

    def bytes_at(params: int) -> tuple[int, int, int]:
        return held_bytes(params, settings.optimizer.state_copies, precision, trainer.processes(exact=True))

    weights, gradients, optimizer = bytes_at(params)
    if weights + gradients + optimizer <= free:
        return
    low, high = 0, depth - 1  # the most layers that fit with a fifth to spare, as the micro-batch's advice
    while low < high:
        middle = (low + high + 1) // 2
        if sum(bytes_at(count(middle))) <= free * AUTO_SHARE:
            low = middle
        else:
            high = middle - 1
    advice = (f"at this width at most model.{setting}={low} fit with a fifth to spare, or {smaller}" if low
              else f"not even one layer fits at this width: {smaller}")
    raise ConfigError(f"{named}: model={model.name} has {params:,} parameters (a vocabulary of {vocab_size:,}), whose "
                      f"weights, gradients and optimizer state need about {gib(weights + gradients + optimizer)} "
                      f"(weights {gib(weights)}, gradients {gib(gradients)}, optimizer state {gib(optimizer)}) per "
                      f"process, but {device.name} has {gib(free)} free{each}; {advice}")


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU's out-of-memory error, or the CPU allocator's refusal (the system's, or torch's own
    for a size past what the machine has)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and any(s in str(error) for s in ("can't allocate memory", "not enough memory")))


def model_too_large(error: BaseException, model: str) -> OutOfMemory:
    """One line for a model whose weights could not be allocated as it was built."""
    asked = re.search(r"allocate (\d+) bytes", str(error))
    what = f"a tensor of {int(asked[1]) / 2 ** 30:,.1f} GiB" if asked else "its weights"
    return OutOfMemory(f"model={model}: building it needed {what}, more than this machine's memory; make it "
                       f"smaller (its width, depth or model.target_params)")


def out_of_memory(plan: Optional[BatchPlan], settings, step: int, run_dir: Path,
                  evaluating: bool = False) -> OutOfMemory:
    """One line for a run that ran out of memory at ``step``: its micro-batch, a smaller one for
    the same rows per step (or, ``evaluating``, a smaller evaluation batch), and where the
    checkpoints written so far are."""
    data, trainer = settings.data, settings.trainer
    batch, accumulate = data.batch_size, trainer.accumulate_grad_batches
    kept = [p.name for p in sorted((run_dir / "checkpoints").glob("*.ckpt"))]
    where = f"the checkpoints written so far are kept in {run_dir / 'checkpoints'} ({', '.join(kept)})" if kept \
        else "no checkpoint had been written yet"
    # A model that reads windows can go on from its last checkpoint in smaller batches (lmexp.resume.other_batches).
    go_on = f"go on from the last checkpoint with python -m lmexp resume={run_dir}" \
        if "last.ckpt" in kept and not type(settings.model).stateful else "start again with"
    if evaluating:
        rows = plan.eval_batch if plan is not None else data.eval_batch_size  # what auto chose, if it did
        if isinstance(rows, int) and rows > 1:
            fix = f"{go_on} data.eval_batch_size={rows // 2}"
        else:
            fix = "start again with a smaller model.block_size or data.bptt"
        return OutOfMemory(f"out of memory evaluating after step {step} with data.eval_batch_size={rows}; {fix}; "
                           f"{where}")
    what = f"micro-batches of {batch} rows"
    if plan is not None:
        what += f" of {plan.estimate.tokens} tokens, estimated at {gib(plan.estimate.total)} per process"
    if batch > 1:
        smaller = max(b for b in range(1, batch) if (batch * accumulate) % b == 0)  # same rows per step
        fix = (f"data.batch_size={smaller}" if data.effective_batch_size else
               f"data.batch_size={smaller} trainer.accumulate_grad_batches={batch * accumulate // smaller}")
        fix = f"{go_on} {fix} (the same {batch * accumulate} rows per step)"
    else:
        fix = "start again with a smaller model.block_size or data.bptt, or a smaller model"
    return OutOfMemory(f"out of memory at step {step} with data.batch_size={batch} ({what}); {fix}; {where}")
