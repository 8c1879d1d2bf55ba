"""What a resumed run takes from its folder and checkpoint, tested without training a run: the
run folder a checkpoint file names, the settings it keeps, a sweep's jobs left in their folders,
and the state the callbacks and random generators carry. (Written for mutations of these paths
that the slower end-to-end resume tests let through.)"""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmexp.errors import ConfigError
from lmexp.module import in_micro_batches_of
from lmexp.resume import REQUESTED, ResumePoint, left_in


CONFIG = {"model": {"name": "lstm", "hidden_size": 32}, "optimizer": {"lr": 0.03}, "data": {"batch_size": 16},
          "trainer": {"max_epochs": 2}}


def stopped_run(run_dir: Path, status, config: dict = CONFIG) -> Path:
    """A run folder as a stopped run leaves it: its config, what it was asked for, results.json
    (``status``, or none: killed) and checkpoints (only their first bytes matter before torch reads them)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run_dir / REQUESTED).write_text(OmegaConf.to_yaml(config))
    for name in ("last.ckpt", "best-step=10.ckpt"):
        (run_dir / "checkpoints" / name).write_bytes(b"\x80\x02pretend")  # a (legacy) pickle's first byte
    if status is not None:
        (run_dir / "results.json").write_text(json.dumps({"status": status}))
    return run_dir


@pytest.mark.parametrize("name", ["last.ckpt", "best-step=10.ckpt"])
def test_resume_from_a_checkpoint_file_continues_the_run_in_the_folder_above_checkpoints(name, tmp_path):
    """resume=<run>/checkpoints/<file>: the run folder is the one holding checkpoints/, not checkpoints/ itself."""
    run_dir = stopped_run(tmp_path / "run", "interrupted")
    point = ResumePoint.find(str(run_dir / "checkpoints" / name))
    assert point.run_dir == run_dir and point.checkpoint == run_dir / "checkpoints" / name


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=0.1", "a resumed run keeps its settings"),
    ("model.hidden_size=64", "a resumed run keeps its settings"),
    # a model that reads windows may take them in other batches (test_resume.py); an LSTM's are its streams
    ("data.batch_size=32", "model=lstm reads its data as streams"),
])
def test_a_resumed_run_refuses_settings_that_make_another_run(override, message, tmp_path):
    run_dir = stopped_run(tmp_path / "run", "interrupted")
    with pytest.raises(ConfigError, match=message):
        ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt").config([f"resume={run_dir}", override])
    # The control: a larger budget is what resume= is for.
    config = ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt").config(["trainer.max_epochs=5"])
    assert config.trainer.max_epochs == 5 and config.optimizer.lr == 0.03


def test_a_job_of_other_settings_left_in_the_folder_is_cleared_not_continued(tmp_path):
    run_dir = stopped_run(tmp_path / "job", "interrupted", {**CONFIG, "optimizer": {"lr": 0.003}})
    assert left_in(run_dir, CONFIG) == (None, None)
    assert not (run_dir / "results.json").exists() and not (run_dir / "checkpoints").exists()


def test_a_job_of_the_same_settings_killed_or_interrupted_is_continued_and_a_finished_one_kept(tmp_path):
    for status in (None, "interrupted"):
        run_dir = stopped_run(tmp_path / f"job-{status}", status)
        results, point = left_in(run_dir, CONFIG)
        assert results is None and point.run_dir == run_dir and point.checkpoint.name == "last.ckpt"
    finished = stopped_run(tmp_path / "job-finished", "finished")
    assert left_in(finished, CONFIG) == ({"status": "finished"}, None)


def test_a_failed_job_left_in_the_folder_starts_again_rather_than_continuing(tmp_path):
    """A job that failed (an error, NaN loss) is not continued from its checkpoint: it would fail again."""
    run_dir = stopped_run(tmp_path / "job", "failed")
    assert left_in(run_dir, CONFIG) == (None, None)


def test_a_resumed_token_budget_counts_on_from_its_checkpoint():
    """TokenBudget's state (the tokens counted before the checkpoint) is restored: a resumed run
    with max_tokens stops where the run left alone did, not max_tokens later."""
    import torch
    from lmexp.callbacks import TokenBudget

    saved = TokenBudget(1000)
    saved._mine, saved.bound, saved.tokens = torch.tensor(900), 960, 900
    state = saved.state_dict()
    resumed = TokenBudget(1000)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state == {"mine": 900, "bound": 960, "tokens": 900}


def test_a_resumed_runs_wall_time_includes_the_time_before_its_checkpoint():
    from lmexp.callbacks import TokenThroughput

    resumed = TokenThroughput()
    resumed.load_state_dict({"tokens": 4096, "seconds": 12.5, "wall_time_s": 3600.0})
    assert (resumed.tokens, resumed.seconds) == (4096, 12.5)
    assert 3600.0 <= resumed.wall_time_s < 3600.0 + 60
    assert resumed.state_dict()["wall_time_s"] >= 3600.0  # carried into the next checkpoint too


@pytest.mark.parametrize("source", ["python", "numpy", "torch"])
def test_restored_random_state_draws_what_the_captured_one_drew(source):
    """lmexp.random_state: each generator (Python's, NumPy's, torch's) is set back, through the
    plain values a weights_only checkpoint holds."""
    import io
    import random

    import numpy as np
    import torch
    from lmexp import random_state

    draw = {"python": lambda: [random.random() for _ in range(5)],
            "numpy": lambda: np.random.rand(5).tolist(),
            "torch": lambda: torch.rand(5).tolist()}[source]
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    buffer = io.BytesIO()
    torch.save(random_state.capture(), buffer)
    expected = draw()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)  # moved on elsewhere
    assert draw() != expected
    buffer.seek(0)
    random_state.restore(torch.load(buffer, weights_only=True))
    assert draw() == expected


WINDOWS = {"model": {"name": "transformer"}, "optimizer": {"lr": 0.03},
           "data": {"batch_size": 16, "eval_batch_size": 8, "effective_batch_size": None},
           "trainer": {"max_epochs": 2, "accumulate_grad_batches": 1, "limit_val_batches": 10,
                       "limit_test_batches": 1.0}}


def windows_run(run_dir, config=WINDOWS):
    from omegaconf import OmegaConf

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02pretend")  # a (legacy) pickle's first byte
    return run_dir


def test_a_checkpoint_beside_the_config_resumes_the_run_in_its_own_folder(tmp_path):
    """resume=<run>/<file>.ckpt (a checkpoint not under checkpoints/): the run folder is the file's own."""
    from lmexp.resume import ResumePoint

    run_dir = windows_run(tmp_path / "run")
    (run_dir / "copy.ckpt").write_bytes(b"\x80\x02pretend")
    point = ResumePoint.find(str(run_dir / "copy.ckpt"))
    assert (point.run_dir, point.checkpoint) == (run_dir, run_dir / "copy.ckpt")


def test_an_evaluation_batch_that_cannot_make_the_limits_windows_is_refused(tmp_path):
    """limit_val_batches=10 batches of 8 are 80 windows: batches of 3 cannot make them."""
    from lmexp.resume import ResumePoint

    run_dir = windows_run(tmp_path / "run")
    point = ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"^data\.eval_batch_size=3: trainer\.limit_val_batches=10 counts evaluation "
                                          r"batches of 8 windows, which batches of 3 do not make; give a "
                                          r"data\.eval_batch_size that divides 80$"):
        point.config(["data.eval_batch_size=3"])
    config = point.config(["data.eval_batch_size=4"])
    assert (config.data.eval_batch_size, config.trainer.limit_val_batches, config.trainer.limit_test_batches) == \
        (4, 20, 1.0)


def test_a_resumed_run_of_an_effective_batch_takes_the_accumulation_from_its_new_micro_batch(tmp_path):
    """data.effective_batch_size fixes the rows per step; the stored accumulation (the plan's, for
    the old micro-batch) is reset for the plan to derive again, unless it is given too."""
    from lmexp.resume import ResumePoint

    stored = {**WINDOWS, "data": {**WINDOWS["data"], "batch_size": 4, "effective_batch_size": 16},
              "trainer": {**WINDOWS["trainer"], "accumulate_grad_batches": 4}}
    run_dir = windows_run(tmp_path / "run", stored)
    point = ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt")
    assert point.config(["data.batch_size=8"]).trainer.accumulate_grad_batches == 1
    given = point.config(["data.batch_size=8", "trainer.accumulate_grad_batches=2"])
    assert (given.data.batch_size, given.trainer.accumulate_grad_batches) == (8, 2)


def test_the_last_resume_on_a_command_line_is_the_one_taken():
    from lmexp.resume import resume_argument

    assert resume_argument(["resume=a", "model=gpt2", "resume=b"]) == "b"
    assert resume_argument(["resume=a", "resume=null"]) is None


def test_a_micro_batch_given_with_plus_plus_on_resume_is_checked_as_any_other(tmp_path):
    from lmexp.resume import ResumePoint

    run_dir = windows_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^\+\+data\.batch_size=8: a resumed run keeps its 16 rows per optimizer step"):
        ResumePoint(run_dir, run_dir / "checkpoints" / "last.ckpt").config(["++data.batch_size=8"])


def test_a_checkpoint_written_inside_a_batch_keeps_its_unfinished_batch_in_other_micro_batches():
    """Lightning tells a checkpoint written between a batch's processing and its completion by
    completed < processed: converted to micro-batches of another size, that difference stays."""
    def counts(done, unfinished):
        return {"ready": done + unfinished, "started": done + unfinished, "processed": done + unfinished,
                "completed": done}

    checkpoint = {"loops": {"fit_loop": {"epoch_loop.batch_progress": {"total": counts(11, 1),
                                                                       "current": counts(3, 1)}}}}
    in_micro_batches_of(checkpoint, before=8, now=4)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["total"] == {"ready": 24, "started": 24, "processed": 24, "completed": 23}
    assert progress["current"] == {"ready": 8, "started": 8, "processed": 8, "completed": 7}
