"""The ``trainer=`` group: Lightning Trainer arguments.

The fields below are the ones lmexp sets or checks; any other argument of ``pl.Trainer`` may be
added with ``+trainer.NAME=VALUE`` and is passed through, after its name is checked against
Lightning's own signature.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lmexp.errors import ConfigError
from lmexp.schema import check, is_number, is_whole, parse, settings_of, unknown_key

# Arguments the run builder gives the Trainer itself.
RESERVED = {"logger", "callbacks", "default_root_dir", "use_distributed_sampler", "plugins"}
# Settings of the trainer group that lmexp reads (the training step; torch's matmul precision;
# compiling the model), not Lightning's Trainer.
NOT_LIGHTNING = ("skip_nonfinite", "max_nonfinite", "matmul_precision", "max_tokens", "compile", "fused_loss",
                 "keep_freed_memory")
# The names Lightning's accelerator registry knows (gpu: cuda or mps, whichever the machine has)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's: high is TF32
BF16 = ("bf16-mixed", "bf16-true", "bf16")
FLOAT16 = ("16-mixed", "16-true", "16")  # as str() gives them: Lightning's 16 is 16-mixed
# Set by a launcher that starts the processes of a run on several machines: SLURM's srun, torchrun.
CLUSTER_VARIABLES = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")
# Under DDP a process that skips its backward pass leaves the others waiting in theirs.
SKIP_IN_ONE_PROCESS = ("trainer.skip_nonfinite=true: must run in one process; set trainer.devices=1 and "
                       "trainer.num_nodes=1, or trainer.skip_nonfinite=false")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"  # a number, a list of device indices, or auto
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = "auto"  # auto: bf16-mixed on a GPU that has bfloat16, 32-true elsewhere
    max_epochs: Optional[int] = 2
    max_steps: int = -1
    max_time: Optional[str] = None  # DD:HH:MM:SS, e.g. 00:00:30:00
    # Stop after the optimizer step at which the run has trained on this many tokens (over all
    # processes), whatever the batch shape: equal data for runs of different layouts. Whichever of
    # the max_* limits comes first stops the run (max_epochs=-1: tokens alone).
    max_tokens: Optional[int] = None
    # Numbers that Lightning reads as a count when int and as a fraction when float: kept as typed.
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    gradient_clip_val: Optional[float] = 0.5
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    log_every_n_steps: int = 20
    num_sanity_val_steps: int = 2
    enable_progress_bar: bool = True
    # A batch whose loss is NaN or infinite: stop the run (false), or skip it, counted in
    # results.json, until more than max_nonfinite were skipped. Skipping checks every step's loss,
    # which makes a GPU wait for it; the default checks every log_every_n_steps.
    skip_nonfinite: bool = False
    max_nonfinite: int = 10
    # float32 matrix products on an Ampere or later GPU: high lets them use TF32 (trainer=gpu and
    # the DDP presets set it); null leaves torch's default (highest: full float32).
    matmul_precision: Optional[str] = None
    # torch.compile the model for training and evaluation (in place: a checkpoint keeps the same
    # keys, and loads compiled or not). The first step waits for the compiler: about 20 s for the
    # nanoGPT CPU recipe here, more for larger models.
    compile: bool = False
    # Training steps apply the output layer and the cross-entropy in one pass, gradients included,
    # over row chunks where the logits pass 32 MiB (lmexp/fused_loss.py); evaluation sums its
    # loss over the same chunks: the same numbers, without the (tokens x vocabulary) logits.
    # Float32 only, and not with compile, whose compiled forward makes the logits itself.
    fused_loss: bool = True
    # glibc's malloc keeps the memory a step frees for the next step, instead of returning it
    # to the kernel and faulting it in again page by page (lmexp/allocator.py): 9% faster
    # training for word_lm_example on CPU. Process-wide, from the trainer's creation on.
    keep_freed_memory: bool = True
    extra: dict = field(default_factory=dict)  # other Lightning arguments: +trainer.NAME=VALUE lands here

    def validate(self, group: str) -> None:
        if self.max_epochs is not None:
            check(self.max_epochs >= 1 or self.max_epochs == -1, f"{group}.max_epochs", self.max_epochs,
                  "a positive integer, or -1 for no limit")
        check(self.max_steps >= 1 or self.max_steps == -1, f"{group}.max_steps", self.max_steps,
              "a positive integer, or -1 for no limit")
        check(self.max_tokens is None or self.max_tokens >= 1, f"{group}.max_tokens", self.max_tokens,
              "a positive integer, or null for no limit")
        if self.gradient_clip_val is not None:
            check(self.gradient_clip_val >= 0, f"{group}.gradient_clip_val", self.gradient_clip_val,
                  ">= 0, or null for no clipping")
        check(self.accumulate_grad_batches >= 1, f"{group}.accumulate_grad_batches",
              self.accumulate_grad_batches, "a positive integer")
        check(self.log_every_n_steps >= 1, f"{group}.log_every_n_steps", self.log_every_n_steps, "a positive integer")
        precisions = lightning_precisions()
        if precisions:  # else Lightning checks it when the Trainer is made
            check(self.precision == "auto" or self.precision in precisions, f"{group}.precision", self.precision,
                  f"auto or one of Lightning's: {', '.join(dict.fromkeys(str(p) for p in precisions))}")
        devices = self.devices
        check(devices == "auto" or (is_whole(devices) and (devices >= 1 or devices == -1))
              or (isinstance(devices, (list, tuple)) and devices and all(is_whole(d) and d >= 0 for d in devices))
              or (isinstance(devices, str) and re.fullmatch(r"-1|\d+|(\d+,)+\d*", devices.replace(" ", ""))),
              f"{group}.devices", devices, "auto, a number of devices (-1: all), or a list of device indices")
        check(self.max_nonfinite >= 0, f"{group}.max_nonfinite", self.max_nonfinite, "a non-negative integer")
        check(self.matmul_precision is None or self.matmul_precision in MATMUL_PRECISIONS,
              f"{group}.matmul_precision", self.matmul_precision, f"null or one of {', '.join(MATMUL_PRECISIONS)}")
        if self.skip_nonfinite and (self.processes() > 1 or "ddp" in str(self.strategy)):
            raise ConfigError(SKIP_IN_ONE_PROCESS)
        check(self.accelerator in ACCELERATORS, f"{group}.accelerator", self.accelerator, f"one of {', '.join(ACCELERATORS)}")
        check(self.num_nodes >= 1, f"{group}.num_nodes", self.num_nodes, "a positive integer")
        check(self.num_sanity_val_steps >= -1, f"{group}.num_sanity_val_steps", self.num_sanity_val_steps,
              "a number of validation batches before training, 0 for none, or -1 for all")
        if self.max_time is not None:
            parts = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", str(self.max_time))
            check(parts is not None and any(int(p) for p in parts.groups()), f"{group}.max_time", self.max_time,
                  "a duration DD:HH:MM:SS longer than 0, e.g. 00:12:00:00, or null for no limit")
        # 0 batches of training would report the untrained model's scores as a run's
        check(self.limit_train_batches is None or (is_number(self.limit_train_batches) and self.limit_train_batches > 0),
              f"{group}.limit_train_batches", self.limit_train_batches,
              "> 0: a number of batches (int) or a fraction of the split (float), or null")
        for key in ("limit_val_batches", "limit_test_batches", "val_check_interval"):
            value = getattr(self, key)
            check(value is None or (is_number(value) and value >= 0),
                  f"{group}.{key}", value, ">= 0: a number of batches (int) or a fraction of the split (float), or null")
        if self.val_check_interval is not None:
            check(self.val_check_interval > 0, f"{group}.val_check_interval", self.val_check_interval,
                  "> 0 (a fraction of an epoch, or a number of steps)")

    def processes(self, exact: bool = False) -> int:
        """How many processes the run will have: one for each device listed or counted on each
        node. With a GPU accelerator named, ``devices=-1`` or ``auto`` means every CUDA device of
        this machine (trainer=ddp: Lightning starts one process each); with ``accelerator=auto``
        too, but only when ``exact`` (the run's plan, which has torch imported): otherwise it
        counts as one, since telling would import torch, which a config check must not wait for."""
        return self.devices_per_node(exact) * self.num_nodes

    def devices_per_node(self, exact: bool = False) -> int:
        devices = self.devices
        if isinstance(devices, str) and devices.strip() not in ("-1", "auto"):
            # As Lightning reads a string: "2" is a count, "0,2" (or "1,") a list of indices.
            text = devices.replace(" ", "")
            devices = [int(i) for i in text.split(",") if i] if "," in text else int(text)
        if isinstance(devices, (list, tuple)):
            return len(devices)
        if devices in (-1, "-1", "auto") and (self.accelerator in ("gpu", "cuda") or (exact and self.on_gpu())):
            import torch  # here, not above: reading settings must not wait for torch

            return max(1, torch.cuda.device_count())  # NVML's count: CUDA is not initialised
        return devices if isinstance(devices, int) and devices > 0 else 1

    def check_machine(self, environ: Optional[dict] = None, model: str = "") -> None:
        """What Lightning would take but this machine cannot run, in one line before anything runs.
        (Lightning itself refuses more GPUs than the machine has, or a GPU where there is none,
        but only after the corpus is read, and names no fix.) ``model``: the model's name
        (``model.name``), for what a model's own kernels cannot do on this device."""
        environ = os.environ if environ is None else environ
        if self.num_nodes > 1 and not any(v in environ for v in CLUSTER_VARIABLES):
            raise ConfigError(f"trainer.num_nodes={self.num_nodes}: several machines need a launcher that starts "
                              f"the run on each: run it under SLURM (trainer=slurm, started with srun) or torchrun, "
                              f"or set trainer.num_nodes=1")
        if self.accelerator in ("gpu", "cuda"):
            import torch

            have = torch.cuda.device_count()
            if not have:
                raise ConfigError(f"trainer.accelerator={self.accelerator}: this machine has no CUDA GPU that torch "
                                  f"{torch.__version__} can use; set trainer=cpu")
            if self.devices_per_node() > have:
                raise ConfigError(f"trainer.devices={self.devices}: this machine has {have} CUDA GPU(s); set "
                                  f"trainer.devices={have} or fewer")
        if str(self.lightning_precision()) in BF16 and not self.on_gpu() and not cpu_has_bf16():
            raise ConfigError(f"trainer.precision={self.precision}: this CPU has no bfloat16 arithmetic (AVX-512 "
                              f"BF16 or AMX), so every bf16 operation would be emulated, slower than float32; set "
                              f"trainer.precision=32-true, or run on a GPU (trainer=gpu)")
        if model == "lstm" and str(self.lightning_precision()) in FLOAT16 and not self.on_gpu() \
                and not cpu_runs_float16_lstm():
            raise ConfigError(f"trainer.precision={self.precision}: torch's LSTM has no float16 kernel on this CPU "
                              f"(oneDNN refuses it); set trainer.precision=bf16-mixed (on a CPU with bfloat16) or "
                              f"32-true, or run on a GPU (trainer=gpu)")

    def on_gpu(self) -> bool:
        """Whether the run gets a CUDA GPU: asked for one, or ``auto`` on a machine that has one."""
        return _on_gpu(self.accelerator)

    def lightning_precision(self) -> Any:
        """``precision`` as Lightning takes it, ``auto`` decided for the device the run gets."""
        if self.precision != "auto":
            return self.precision
        import torch

        bf16 = self.on_gpu() and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16-mixed" if bf16 else "32-true"

    def kwargs(self) -> dict:
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", *NOT_LIGHTNING)}
        interval = self.val_check_interval
        if isinstance(interval, int) and not isinstance(interval, bool):
            # A count of optimizer steps, as max_steps and log_every_n_steps are; Lightning counts
            # micro-batches, so with accumulation (data.batch_size=auto chooses it from the
            # machine's memory) the same setting would validate that many times as often.
            named["val_check_interval"] = interval * self.accumulate_grad_batches
        return {**named, "precision": self.lightning_precision(), **self.extra}


def _on_gpu(accelerator: str) -> bool:
    import torch  # here, not above: reading settings must not wait for torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def cpu_has_bf16() -> bool:
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@functools.cache
def cpu_runs_float16_lstm() -> bool:
    """Whether torch's LSTM runs in float16 on this CPU. oneDNN, which runs it, had no float16
    LSTM on the CPU tried (2026-12-02: "could not create a primitive descriptor for the LSTM
    forward propagation primitive", under 16-mixed's autocast, and under 16-true in lmexp's memory
    estimate, which measures the model under autocast); a CPU or a torch that has one is asked,
    not guessed: a 2-unit LSTM under float16 autocast, about 2 ms. GRU and RNN cells ran there."""
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


@functools.cache
def lightning_arguments() -> list[str]:
    """The names ``pl.Trainer`` takes, read from the installed Lightning's source: importing
    Lightning to ask takes seconds, and a mistyped argument must be reported at once."""
    spec = importlib.util.find_spec("pytorch_lightning")  # finds the package without running it
    source = Path(spec.origin).parent / "trainer" / "trainer.py" if spec and spec.origin else None
    if source is None or not source.is_file():  # an unusual install: ask Lightning itself
        import pytorch_lightning as pl

        return [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            names = [a.arg for a in args if a.arg != "self"]
            if "max_epochs" in names:  # Trainer's, not a helper class's
                return names
    raise RuntimeError(f"no Trainer.__init__ in {source}")


@functools.cache
def lightning_precisions() -> tuple:
    """The precisions Lightning accepts, read from its source (the ``Literal`` types named
    ``_PRECISION_INPUT*``), for the reason ``lightning_arguments`` reads it; empty where the
    source is not where it was."""
    spec = importlib.util.find_spec("lightning_fabric")
    source = Path(spec.origin).parent / "plugins" / "precision" / "precision.py" if spec and spec.origin else None
    if source is None or not source.is_file():
        return ()
    found = []
    for node in ast.parse(source.read_text()).body:
        targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if any(t.startswith("_PRECISION_INPUT") for t in targets) and isinstance(node.value, ast.Subscript) \
                and getattr(node.value.value, "id", "") == "Literal":
            found += [c.value for c in ast.walk(node.value.slice) if isinstance(c, ast.Constant)]
    return tuple(found)


def parse_trainer(node: Any, group: str = "trainer") -> TrainerConfig:
    """The typed fields checked by the schema, every other key by Lightning's signature."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = settings_of(TrainerConfig)
    extra = {**values.pop("extra", {}), **{k: v for k, v in values.items() if k not in known}}
    allowed = sorted(set(lightning_arguments()) - RESERVED)
    for key in extra:
        if key not in allowed:
            raise unknown_key(group, key, allowed)
    return parse(TrainerConfig, {**{k: v for k, v in values.items() if k in known}, "extra": extra}, group)

