"""``trainer.compile=true``: torch.compile of the model trains as the eager model does, to float32
tolerance, and its checkpoints have the eager model's keys (nn.Module.compile works in place)."""

import csv

import pytest
import torch
from torch._dynamo.utils import counters  # torch's own count of what dynamo compiled

from conftest import train_here

GPT = ["model=gpt2", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
       "data.batch_size=4", "data.effective_batch_size=null", "trainer.max_epochs=1", "trainer.max_steps=4",
       "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
       "trainer.log_every_n_steps=1", "regularization.dropout=0", "logger=csv", "trainer.enable_progress_bar=false"]


def losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_a_compiled_model_trains_and_scores_as_the_eager_one(tmp_path, cache_dir):
    counters.clear()
    eager = train_here(GPT, tmp_path / "eager", cache_dir)
    assert not counters["stats"]["unique_graphs"]
    compiled = train_here([*GPT, "trainer.compile=true"], tmp_path / "compiled", cache_dir)
    # Compiled, not run eagerly under the setting's name, and whole: no graph broken.
    assert counters["stats"]["unique_graphs"] >= 1
    assert not sum(counters["graph_break"].values())
    assert len(losses(tmp_path / "compiled")) == 4
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    assert compiled["test_ppl"] == pytest.approx(eager["test_ppl"], rel=1e-4)
    keys = [set(torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
            for run in ("eager", "compiled")]
    assert keys[0] == keys[1]
