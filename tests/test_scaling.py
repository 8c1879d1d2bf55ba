"""The scaling study: the power-law fit recovers the law its points came from, in both forms; too
few sizes is one line; the report of run folders fits what the fit fits and draws it; and the
preset's sweep composes into runs of sizes a decade apart, each a size its model reaches."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from conftest import sweep_of

from lmexp.cli import compose
from lmexp.config import load_settings
from lmexp.errors import UserError
from lmexp.report.runs import find_runs
from lmexp.report.scaling import FLOOR, PURE, fit_power_law, scaling_report
from lmexp.sizing import fit_to_target

SIZES = np.geomspace(1e4, 1e6, 6)  # two decades
# data=tiny with the word tokenizer (README, "The embedded default corpus"), to which the preset is
# held below: its vocabulary, on which the sizing's output layer and the LSTM's output bias depend.
TINY_VOCAB = 11_559


def noisy(loss: np.ndarray, seed: int = 0, scale: float = 0.002) -> np.ndarray:
    """Losses with relative noise: a few seeds' spread at each size."""
    return loss * (1 + scale * np.random.default_rng(seed).standard_normal(len(loss)))


def test_the_fit_with_a_floor_recovers_its_law():
    alpha, n_c, l_inf = 0.35, 2e4, 3.0
    law = fit_power_law(SIZES, noisy((n_c / SIZES) ** alpha + l_inf))
    assert law.form == FLOOR
    assert abs(law.alpha - alpha) < 0.03 and abs(law.l_inf - l_inf) < 0.05 and abs(law.n_c / n_c - 1) < 0.15
    assert abs(law.alpha - alpha) < 4 * law.alpha_err  # the error says how far off it may be


def test_a_pure_power_law_falls_back_to_the_pure_form():
    """Kaplan et al.'s own law for LSTMs' and Transformers' scale (alpha_N = 0.076, N_c = 8.8e13):
    the floor fit ends at L_inf = 0, its bound, and the straight line in log-log is fitted instead."""
    alpha, n_c = 0.076, 8.8e13
    loss = noisy((n_c / SIZES) ** alpha)
    for law in (fit_power_law(SIZES, loss), fit_power_law(SIZES, loss, PURE)):
        assert law.form == PURE and law.l_inf == 0
        assert abs(law.alpha - alpha) < 0.005 and abs(math.log10(law.n_c / n_c)) < 0.5


def test_as_many_points_as_parameters_fit_exactly_with_unknown_errors():
    law = fit_power_law(SIZES[:2], (1e13 / SIZES[:2]) ** 0.08)
    assert law.form == PURE and abs(law.alpha - 0.08) < 1e-6 and law.alpha_err == math.inf


@pytest.mark.parametrize("points, form, says", [
    (1, None, "1 model size(s): a power law (N_c/N)^α needs at least 2; train more sizes"),
    (2, FLOOR, "2 model size(s): a power law (N_c/N)^α + L_∞ needs at least 3; train more sizes"),
])
def test_too_few_points_are_one_line(points, form, says):
    with pytest.raises(UserError) as error:
        fit_power_law(SIZES[:points], 4.0 * np.ones(points), form)
    assert str(error.value) == says


def write_run(folder, model: str, size: int, loss: float, seed: int, status: str = "finished",
              tokenizer: str = "word", max_tokens: int | None = None) -> None:
    """A run folder as lmexp writes one; its validation loss 0.1 above its test loss, so that a
    report of the wrong split is seen. ``max_tokens``: also a config.yaml with that budget."""
    folder.mkdir(parents=True)
    results = {"status": status, "model": model, "params": size + 1_000_000, "params_without_embeddings": size,
               "test_loss": loss, "test_ppl": math.exp(loss) if loss < 709 else math.inf,
               "best_val_ppl": math.exp(loss + 0.1) if loss < 709 else math.inf, "seed": seed, "data": "tiny",
               "tokenizer": tokenizer}
    (folder / "results.json").write_text(json.dumps(results))
    if max_tokens is not None:
        config = {"model": {"name": model, "target_params_without_embeddings": size}, "seed": seed,
                  "trainer": {"max_tokens": max_tokens}}
        (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML


def test_a_diverged_run_is_no_point_and_other_units_are_other_laws(tmp_path):
    """A run whose loss is NaN is left out (the fit once stopped with numpy's traceback on it), and
    runs on characters are not averaged with runs on words as if they were seeds."""
    from lmexp.report.runs import read_run
    from lmexp.report.scaling import architectures

    for i, size in enumerate((10_000, 100_000)):
        write_run(tmp_path / f"w{i}", "lstm", size, 5.0 - i, seed=1)
        write_run(tmp_path / f"c{i}", "lstm", size, 1.5 - 0.1 * i, seed=1, tokenizer="char")
    write_run(tmp_path / "nan", "lstm", 10_000, float("nan"), seed=2)
    write_run(tmp_path / "gru", "gru", 10_000, float("inf"), seed=1)  # an architecture whose every run diverged
    found = architectures([read_run(folder) for folder in sorted(tmp_path.iterdir())])
    assert [(a.name, list(a.losses)) for a in found] == [("gru (tiny, word)", []), ("lstm (tiny, char)", [1.5, 1.4]),
                                                         ("lstm (tiny, word)", [5.0, 4.0])]
    # Each is counted, so that a law of fewer seeds than were run is seen as such.
    assert [a.points() for a in found] == ["0 sizes, 0 runs, 1 left out (diverged or unfinished)", "2 sizes, 2 runs",
                                           "2 sizes, 2 runs, 1 left out (diverged or unfinished)"]


def test_a_run_tested_on_nothing_is_its_validation_loss_and_says_so(tmp_path):
    """Without a test loss, a run's point is its best validation loss; the table and the figure's
    axis say which split the points are of (the axis once said "test loss" for both)."""
    from lmexp.report.runs import read_run
    from lmexp.report.scaling import architectures

    for i, size in enumerate((10_000, 100_000)):
        write_run(tmp_path / f"{i}", "lstm", size, 5.0 - i, seed=1)
        results = json.loads((tmp_path / f"{i}" / "results.json").read_text())
        del results["test_loss"], results["test_ppl"]
        (tmp_path / f"{i}" / "results.json").write_text(json.dumps(results))
    (found,) = architectures([read_run(folder) for folder in sorted(tmp_path.iterdir())])
    assert list(found.losses) == pytest.approx([5.1, 4.1])  # write_run's validation loss, 0.1 above the test's
    assert found.points() == "2 sizes, 2 runs, validation loss"


def test_runs_that_are_not_seeds_of_one_study_are_one_line(tmp_path):
    """An architecture's runs differing in more than the model and the seed (another token budget:
    a sweep folder holding an earlier sweep's jobs), or one size and seed twice, are not averaged
    as seeds of one law: the report once did, silently."""
    from lmexp.report.runs import read_run
    from lmexp.report.scaling import architectures

    for i, size in enumerate((10_000, 100_000)):
        write_run(tmp_path / "a" / f"{i}", "lstm", size, 5.0 - i, seed=1, max_tokens=30_000)
        write_run(tmp_path / "b" / f"{i}", "lstm", size, 4.0 - i, seed=1, max_tokens=2_300_000)
    with pytest.raises(UserError, match=r"differ in more than size and seed \(trainer\.max_tokens 30000 against "
                                        r"2300000\); report one study's runs at a time$"):
        architectures([read_run(folder) for folder in sorted((tmp_path / "a").iterdir())
                       + sorted((tmp_path / "b").iterdir())])
    write_run(tmp_path / "c" / "0", "lstm", 10_000, 4.9, seed=1, max_tokens=30_000)
    with pytest.raises(UserError, match=r"the same lstm size and seed \(1\) twice, not two seeds"):
        architectures([read_run(folder) for folder in [*sorted((tmp_path / "a").iterdir()), tmp_path / "c" / "0"]])
    assert [list(a.losses) for a in architectures([read_run(f) for f in sorted((tmp_path / "a").iterdir())])] \
        == [[5.0, 4.0]]


@pytest.mark.parametrize("points", [3, 4])
def test_a_loss_that_does_not_fall_is_no_law(points):
    """Equal losses at every size: least squares leaves alpha at rounding's size and N_c past any
    float (the report once printed N_c = inf, L_inf = 2.643 ± 994 as a law)."""
    with pytest.raises(UserError, match="the loss does not fall with the model's size"):
        fit_power_law(SIZES[:points], 4.0 * np.ones(points))


def test_a_fall_within_its_standard_error_is_no_law():
    """Losses that wander (4.0, 3.9, 4.05, 3.92) fit alpha = 0.0025 ± 0.010 and N_c = 4e245: a
    finite number, which the report printed as a law until 2026-12-01 (a review saw N_c =
    9.96e307 from barely trained runs). A fall of a few standard errors stays a law."""
    with pytest.raises(UserError, match=r"\(alpha = 0.00248 ± 0.0103, within one standard error of none\)"):
        fit_power_law(SIZES[:4], [4.0, 3.9, 4.05, 3.92], "(N_c/N)^α")
    law = fit_power_law(SIZES[:4], [5.02, 4.86, 4.84, 4.86], "(N_c/N)^α")  # the README's LSTM row: 1.7 errors
    assert law.alpha == pytest.approx(0.0110, rel=1e-2) and law.alpha > law.alpha_err


def test_the_report_fits_each_architecture_and_draws_it(tmp_path):
    """Two seeds a size (their mean is the point), a stopped run left out, and an architecture
    with one size listed as not fitted. The seeds' spread grows with the size, so that only
    their mean lies on the law: the lower or the upper seed alone would bend it."""
    sweep, laws = tmp_path / "sweep", {"lstm": (0.30, 3e4, 4.0), "gpt2": (0.40, 1e4, 3.5)}
    job, sizes = 0, [int(n) for n in SIZES]
    for model, (alpha, n_c, l_inf) in laws.items():
        for i, size in enumerate(sizes):
            for seed, shift in ((1, -0.02 * i), (2, 0.02 * i)):
                write_run(sweep / f"{job}-{model}", model, size, (n_c / size) ** alpha + l_inf + shift, seed)
                job += 1
    write_run(sweep / f"{job}-gpt2", "gpt2", sizes[0], 99.0, 3, status="interrupted")
    write_run(sweep / f"{job + 1}-gru", "gru", 50_000, 5.0, 1)

    table = scaling_report(find_runs([str(sweep)]), tmp_path / "report")

    assert (tmp_path / "report" / "scaling.png").read_bytes().startswith(b"\x89PNG")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert set(rows) == {"lstm", "gpt2", "gru"}
    assert "not fitted: 1 model size(s)" in rows["gru"]
    for model, (alpha, n_c, l_inf) in laws.items():
        direct = fit_power_law(sizes, [(n_c / size) ** alpha + l_inf for size in sizes])
        points, alpha_cell, n_c_cell, l_inf_cell, form = (cell.strip() for cell in rows[model].split("|")[2:-1])
        stopped = ", 1 left out (diverged or unfinished)" if model == "gpt2" else ""
        assert (points, form) == (f"6 sizes, 12 runs{stopped}", direct.form)
        assert alpha_cell == f"{direct.alpha:.3f} ± {direct.alpha_err:.3f}"
        assert n_c_cell.startswith(f"{direct.n_c:.3g} ± ")  # its error, an exact fit's, is rounding's digits
        assert l_inf_cell == f"{direct.l_inf:.3f} ± {direct.l_inf_err:.3f}"


def test_a_report_with_nothing_to_fit_says_why(tmp_path):
    write_run(tmp_path / "0-lstm", "lstm", 10_000, 5.0, 1)
    with pytest.raises(UserError, match=r"^no architecture could be fitted: lstm: 1 model size\(s\)"):
        scaling_report(find_runs([str(tmp_path)]), tmp_path / "report")


def test_the_scaling_preset_sweeps_reachable_sizes_a_decade_apart_on_equal_data():
    sweep = sweep_of("scaling")
    architectures = sweep["+experiment/scaling"]
    sizes = [int(n) for n in sweep["model.target_params_without_embeddings"]]
    assert set(architectures) == {"lstm", "gpt2"} and len(sizes) == 4 and max(sizes) >= 10 * min(sizes)
    budgets = set()
    for architecture in architectures:
        # One composition per architecture (a second each); the sizes differ only in the target.
        s = load_settings(compose(["experiment=scaling", f"+experiment/scaling={architecture}",
                                   f"model.target_params_without_embeddings={sizes[0]}"]))
        assert (s.names["model"], s.names["data"], s.names["tokenizer"]) == (architecture, "tiny", "word")
        budgets.add(s.trainer.max_tokens)
        # The tokens alone end each run (and GPT-2's cosine decays over them: lmexp/module.py).
        assert s.trainer.max_epochs == -1 and s.trainer.max_steps == -1 and s.trainer.max_time is None
        for size in sizes:
            _, chosen = fit_to_target(replace(s.model, target_params_without_embeddings=size), TINY_VOCAB)
            assert abs(chosen["params_without_embeddings"] - size) <= 0.05 * size  # fit_to_target raises beyond
    assert len(budgets) == 1 and None not in budgets


def test_a_sizes_point_is_the_mean_of_its_seeds(tmp_path):
    """Three seeds a size: the point is their mean, not their median (nor any one seed's)."""
    from lmexp.report.runs import read_run
    from lmexp.report.scaling import architectures

    for i, size in enumerate((10_000, 100_000)):
        for seed, shift in ((1, 0.0), (2, 0.1), (3, 0.5)):
            write_run(tmp_path / f"{i}-{seed}", "lstm", size, 5.0 - i + shift, seed)
    (found,) = architectures([read_run(folder) for folder in sorted(tmp_path.iterdir())])
    assert list(found.sizes) == [10_000, 100_000] and found.runs == 6
    assert list(found.losses) == pytest.approx([5.2, 4.2])


def test_a_failed_job_is_counted_with_its_models_law(tmp_path):
    """A sweep's failed job (__main__.record_failure) is one run left out of its model's row: it
    was recorded without its tokenizer until 2026-12-01, and made a row of its own, which also
    renamed the real one ("lstm (tiny, word)")."""
    from lmexp.report.runs import read_run
    from lmexp.report.scaling import architectures

    for i, size in enumerate((10_000, 100_000, 1_000_000)):
        write_run(tmp_path / f"{i}", "lstm", size, 5.0 - i, seed=1)
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "results.json").write_text(json.dumps(
        {"status": "failed", "error": "lmexp: error: ...", "model": "lstm", "data": "tiny", "seed": 2}))
    (found,) = architectures([read_run(folder) for folder in sorted(tmp_path.iterdir())])
    assert (found.name, found.points()) == ("lstm", "3 sizes, 3 runs, 1 left out (diverged or unfinished)")
