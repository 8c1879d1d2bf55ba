"""``python -m lmexp.report --scaling SWEEP_DIR``: test loss against model size, one power law per
architecture, as in Kaplan et al. 2020 (Fig. 7: LSTMs and Transformers, loss against parameters
without embeddings). conf/experiment/scaling.yaml is a sweep that this reads.

The law is ``L(N) = (N_c / N)^alpha + L_inf``: Kaplan's eq. 1.1 with the irreducible loss
``L_inf`` that Henighan et al. 2020 add, which a small corpus reaches soon. With as few sizes as a
CPU allows, its three parameters are barely determined, so the pure power law ``(N_c / N)^alpha``
(a straight line in log-log) is the fallback, and the table says which form each fit is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from scipy.optimize import OptimizeWarning, curve_fit

from lmexp.atomic import replaced
from lmexp.config import flat
from lmexp.errors import UserError
from lmexp.report.runs import RunRecord, experiment_settings, without_keys

FLOOR = "(N_c/N)^α + L_∞"
PURE = "(N_c/N)^α"
PARAMETERS = {FLOOR: 3, PURE: 2}


@dataclass
class PowerLaw:
    """A fitted law and its standard errors (inf where the points fix it exactly: as many points
    as parameters). ``L_inf`` is 0 for the pure form."""

    alpha: float
    alpha_err: float
    n_c: float
    n_c_err: float
    l_inf: float
    l_inf_err: float
    form: str  # FLOOR or PURE

    def __call__(self, n: np.ndarray) -> np.ndarray:
        return (self.n_c / np.asarray(n, dtype=float)) ** self.alpha + self.l_inf


def fit_power_law(n, loss, form: Optional[str] = None) -> PowerLaw:
    """The law through the points (``n`` parameters, ``loss`` in nats per token). ``form``: FLOOR,
    PURE, or None for FLOOR unless its fit fails or is degenerate (a parameter at its bound, or
    errors that are not finite), then PURE."""
    n, loss = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    wanted = PARAMETERS[form] if form else PARAMETERS[PURE]
    if len(n) < wanted:
        raise UserError(f"{len(n)} model size(s): a power law {form or PURE} needs at least {wanted}; "
                        f"train more sizes")
    if form == PURE or (form is None and len(n) < PARAMETERS[FLOOR]):
        return _fit_pure(n, loss)
    fitted = _fit_floor(n, loss)
    if fitted is None:
        if form == FLOOR:
            raise UserError(f"the {FLOOR} fit to {len(n)} sizes is degenerate (a parameter at its bound, or "
                            f"undetermined); fit {PURE} instead, or train more sizes")
        return _fit_pure(n, loss)
    return fitted


def _centred_log(n: np.ndarray) -> tuple[np.ndarray, float]:
    """log N measured from the points' geometric mean: the prefactor then stands at the middle of
    the data, not at N = 1 many decades away, so that it and alpha are nearly uncorrelated."""
    log_n = np.log(n)
    return log_n - log_n.mean(), float(log_n.mean())


def _n_c(b: float, alpha: float, centre: float, cov: np.ndarray) -> tuple[float, float]:
    """N_c and its error from ``(N_c/N)^alpha = exp(b - alpha x)``, x = log N - centre: log N_c =
    centre + b / alpha, its variance by the delta method over the covariance of (b, alpha)."""
    log_n_c = centre + b / alpha
    gradient = np.array([1 / alpha, -b / alpha**2])
    log_err = math.sqrt(max(gradient @ cov @ gradient, 0.0)) if np.all(np.isfinite(cov)) else math.inf
    with np.errstate(over="ignore"):  # a loss that barely falls puts N_c past any float: inf
        n_c = float(np.exp(log_n_c))
    return n_c, n_c * log_err


def _errors(cov: np.ndarray) -> np.ndarray:
    return np.sqrt(np.abs(np.diag(cov))) if np.all(np.isfinite(cov)) else np.full(len(cov), math.inf)


def _fit_pure(n: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """A straight line in log-log (least squares on log L): log L = b - alpha x."""
    x, centre = _centred_log(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # no covariance from 2 points: inf, said so below
        (b, alpha), cov = curve_fit(lambda x, b, alpha: b - alpha * x, x, np.log(loss))
    n_c, n_c_err = _n_c(b, alpha, centre, cov)
    alpha_err = float(_errors(cov)[1])
    # A fall within one standard error of none is noise, whatever N_c it puts past any float
    # (alpha of rounding's size) or just short of it (4e245 from losses 4.0, 3.9, 4.05, 3.92 over two decades).
    noise = math.isfinite(alpha_err) and alpha < alpha_err  # inf: as many points as parameters, no error known
    if alpha <= 0 or not math.isfinite(n_c) or noise:
        within = f" ± {alpha_err:.3g}, within one standard error of none" if noise and alpha > 0 else ""
        raise UserError(f"the loss does not fall with the model's size (alpha = {alpha:.3g}{within}): no power "
                        f"law; train longer, or check the runs for overfitting")
    return PowerLaw(float(alpha), alpha_err, n_c, n_c_err, 0.0, 0.0, PURE)


def _fit_floor(n: np.ndarray, loss: np.ndarray) -> Optional[PowerLaw]:
    """L = exp(b - alpha x) + L_inf with alpha > 0 and 0 <= L_inf <= the lowest loss; None when it
    does not converge or ends degenerate."""
    x, centre = _centred_log(n)
    lowest = float(loss.min())
    # Start from half the lowest loss as the floor, and the line through log(L - floor).
    floor = lowest / 2
    slope, b = np.polyfit(x, np.log(loss - floor), 1)
    start = (b, max(-slope, 1e-3), floor)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            (b, alpha, l_inf), cov = curve_fit(lambda x, b, alpha, l_inf: np.exp(b - alpha * x) + l_inf, x, loss,
                                               p0=start, bounds=([-np.inf, 0, 0], [np.inf, np.inf, lowest]))
    except (RuntimeError, OptimizeWarning):
        return None
    errors = _errors(cov)
    at_bound = alpha <= 1e-6 or l_inf <= 1e-6 * lowest or l_inf >= (1 - 1e-6) * lowest
    if at_bound or not np.all(np.isfinite(errors)):
        return None
    n_c, n_c_err = _n_c(b, alpha, centre, cov[:2, :2])
    if not (math.isfinite(n_c) and math.isfinite(n_c_err)):
        return None
    return PowerLaw(float(alpha), float(errors[1]), n_c, n_c_err, float(l_inf), float(errors[2]), FLOOR)


@dataclass
class Architecture:
    """One architecture's points, each the mean over the seeds run at that size, and its law."""

    name: str
    sizes: np.ndarray  # parameters without embeddings, ascending
    losses: np.ndarray  # nats per token
    runs: int
    scored: str = "test"  # the split its losses are of: "test", or "validation" for runs tested on nothing
    left_out: int = 0  # its runs that are no point: diverged, or not finished
    law: Optional[PowerLaw] = None
    reason: str = ""  # why it has no law

    def points(self) -> str:
        left_out = f", {self.left_out} left out (diverged or unfinished)" if self.left_out else ""
        scored = "" if self.scored == "test" else f", {self.scored} loss"
        return f"{len(self.sizes)} sizes, {self.runs} runs{left_out}{scored}"


def scored_split(run: RunRecord) -> str:
    """The split whose loss is the run's point: the test split, or for a run tested on nothing its
    best validation."""
    return "test" if run.results.get("test_loss") is not None else "validation"


def loss_of(run: RunRecord) -> Optional[float]:
    """The loss of the run's scored split in nats per token. None for a run that diverged (an
    infinite or NaN loss): it is no point of a law."""
    if scored_split(run) == "test":
        loss = float(run.results["test_loss"])
    else:
        ppl = run.results.get("best_val_ppl")
        loss = math.log(ppl) if ppl and ppl > 0 else None
    return loss if loss is not None and math.isfinite(loss) else None


def recipe(run: RunRecord) -> dict:
    """Every setting but the seed and the model's own (its width is what the study varies): the
    runs of one law share it."""
    return without_keys(experiment_settings(run), ("model",))


def _first_difference(a: dict, b: dict) -> str:
    """The first setting, in dotted form, whose value differs between ``a`` and ``b``, and both values."""
    a, b = flat(a), flat(b)
    key = next(k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))
    return f"{key} {a.get(key)!r} against {b.get(key)!r}"


def architectures(runs: list[RunRecord]) -> list[Architecture]:
    """The finished runs that have a size and a loss, by architecture (``run.model``) and by what
    its losses are of: runs on other corpora or tokenizers are other laws, named with them, not
    seeds of one (nats per word and per character do not average). Runs of one architecture
    must share every other setting (token budget, learning rate, ...), and a seed at a size is
    one run: otherwise the points are not seeds of one law, and that is an error."""
    points: dict[tuple, dict[int, list[float]]] = {}
    first_runs: dict[tuple, RunRecord] = {}
    seen: dict[tuple, RunRecord] = {}
    scored: dict[tuple, set[str]] = {}
    left_out: dict[tuple, int] = {}
    for run in runs:
        size, loss = run.results.get("params_without_embeddings"), loss_of(run)
        key = (run.model, run.results.get("data"), run.results.get("tokenizer"))
        # lmexp wrote results.json without a status only for a finished run
        if not (run.results.get("status", "finished") == "finished" and size and loss is not None):
            left_out[key] = left_out.get(key, 0) + 1  # counted, so that a law of fewer seeds is seen as such
        else:
            first = first_runs.setdefault(key, run)
            if run.config and first.config and recipe(run) != recipe(first):  # without config.yaml: nothing to compare
                differ = _first_difference(recipe(first), recipe(run))
                raise UserError(f"{first.folder} and {run.folder}: two {run.model} runs differ in more than size "
                                f"and seed ({differ}); report one study's runs at a time")
            if run.seed is not None:
                twin = seen.setdefault((key, int(size), run.seed), run)
                if twin is not run:
                    raise UserError(f"{twin.folder} and {run.folder}: the same {run.model} size and seed "
                                    f"({run.seed}) twice, not two seeds; leave one out of the paths")
            points.setdefault(key, {}).setdefault(int(size), []).append(loss)
            scored.setdefault(key, set()).add(scored_split(run))
    for key in [k for k in left_out if None in k[1:] and k not in points]:
        same = [k for k in points if k[0] == key[0] and key[1] in (None, k[1])]
        if len(same) == 1:  # a failed job recorded without its tokenizer (before 2026-12-01): its model's law
            left_out[same[0]] = left_out.get(same[0], 0) + left_out.pop(key)
    mixed = len({key[1:] for key in points.keys() | left_out.keys()}) > 1
    found = []
    for model, data, tokenizer in sorted(points.keys() | left_out.keys(), key=lambda key: tuple(map(str, key))):
        by_size = points.get((model, data, tokenizer), {})
        sizes = sorted(by_size)
        found.append(Architecture(f"{model} ({data}, {tokenizer})" if mixed else model, np.array(sizes, dtype=float),
                                  np.array([np.mean(by_size[s]) for s in sizes]),
                                  sum(len(losses) for losses in by_size.values()),
                                  " and ".join(sorted(scored.get((model, data, tokenizer), {"test"}), reverse=True)),
                                  left_out.get((model, data, tokenizer), 0)))
    return found


def scaling_report(runs: list[RunRecord], out_dir: str | Path) -> str:
    """A power law fitted to each architecture's runs, drawn in ``out_dir/scaling.png``; the
    Markdown table of the laws. An architecture with too few sizes is a row that says why; none
    fitted at all is an error."""
    found = architectures(runs)
    if not found:
        raise UserError("no finished run has params_without_embeddings and a test or validation loss in its "
                        "results.json: nothing to fit")
    for arch in found:
        try:
            arch.law = fit_power_law(arch.sizes, arch.losses)
        except UserError as e:
            arch.reason = str(e)
    if not any(arch.law for arch in found):
        raise UserError("no architecture could be fitted: " + "; ".join(f"{a.name}: {a.reason}" for a in found))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    draw(found, out_dir / "scaling.png")
    return table(found)


def _plus_minus(value: float, error: float, form: str) -> str:
    spread = f"{error:{form}}" if math.isfinite(error) else "n/a"
    return f"{value:{form}} ± {spread}"


def table(found: list[Architecture]) -> str:
    lines = ["| architecture | points | α | N_c | L_∞ | form |", "|---|---|---|---|---|---|"]
    for arch in found:
        points = arch.points()
        law = arch.law
        if law is None:
            lines.append(f"| {arch.name} | {points} | not fitted: {arch.reason} | | | |")
            continue
        l_inf = _plus_minus(law.l_inf, law.l_inf_err, ".3f") if law.form == FLOOR else "0 (pure)"
        lines.append(f"| {arch.name} | {points} | {_plus_minus(law.alpha, law.alpha_err, '.3f')} | "
                     f"{_plus_minus(law.n_c, law.n_c_err, '.3g')} | {l_inf} | {law.form} |")
    return "\n".join(lines)


def draw(found: list[Architecture], path: Path) -> None:
    figure = Figure(figsize=(6.4, 4.8))  # not pyplot: no global state, no display needed
    axes = figure.subplots()
    for i, arch in enumerate(found):
        colour = f"C{i}"
        label = f"{arch.name} (not fitted)" if arch.law is None else \
            f"{arch.name}: α = {_plus_minus(arch.law.alpha, arch.law.alpha_err, '.3f')}"
        axes.plot(arch.sizes, arch.losses, "o", color=colour, label=label)
        if arch.law is not None:
            n = np.geomspace(arch.sizes[0] / 1.5, arch.sizes[-1] * 1.5, 100)
            axes.plot(n, arch.law(n), "-", color=colour)
    axes.set_xscale("log")
    axes.set_yscale("log")
    # Losses span less than a decade: label the minor ticks (4, 5, 6), or the axis has no numbers.
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.yaxis.set_minor_formatter(ScalarFormatter())
    axes.set_xlabel("parameters without embeddings")
    splits = {arch.scored for arch in found}
    axes.set_ylabel(f"{splits.pop() if len(splits) == 1 else 'test or validation'} loss (nats per token)")
    axes.set_title("Loss against model size (Kaplan et al. 2020, Fig. 7)")
    axes.legend()
    figure.tight_layout()
    with replaced(path) as f:
        figure.savefig(f, format="png", dpi=120)
