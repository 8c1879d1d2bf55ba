"""``python -m lmexp.sweeps [sweeps/*.yaml]``: W&B sweep files checked offline, without wandb.

A sweep file is read only when ``wandb sweep`` uploads it, and its parameters only reach lmexp
when an agent starts a run: a typo (``model.hiden_size``), a value lmexp refuses or a lost
``${args_no_hyphens}`` would show as runs failing one after another, after the sweep was created.
This checks the file's structure against the keys W&B documents (docs.wandb.ai, "Sweep
configuration options", and the JSON schema of the ``sweeps`` package), then composes every
parameter's values as Hydra overrides of the project's config, exactly as ``python -m lmexp``
would compose the agent's command line (``lmexp.cli.compose``, ``lmexp.config.load_settings``).

W&B's own offline check (the ``sweeps`` package) is not used: it pins an old numpy. Nothing
here imports wandb, torch or Lightning: each command line costs one composition, about what
``python -m lmexp --cfg job`` takes, and a file as many as its longest list of values.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from lmexp.cli import as_typed, compose
from lmexp.config import CONF_DIR, load_settings
from lmexp.errors import ConfigError, HelpRequested, reported_as_one_line
from lmexp.schema import is_number, is_whole
from lmexp.stops import stopped_as_one_line

SWEEPS_DIR = CONF_DIR.parent / "sweeps"

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
# What a sweep may optimise: the validation metrics lmexp logs after every validation
# (module.py logs "val/" + each key of lmexp.metrics.split_metrics), all lower-is-better.
# train/* would tune for memorising and test/* is logged once, at the end, where Hyperband
# cannot use it and tuning on it would leak the test split into the choice.
METRIC_GOALS = {"val/ppl": "minimize", "val/loss": "minimize", "val/word_ppl": "minimize", "val/bpb": "minimize"}
METRIC_KEYS = ("name", "goal", "target")
EARLY_TERMINATE_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
# W&B's pattern for a parameter name (its schema's propertyNames): no "+", so a parameter can
# only change a setting the config has, never add one.
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# What the agent writes for ${args_no_hyphens}: f"{name}={value}" for each parameter
# (wandb/sdk/launch/sweeps/utils.py, create_sweep_command_args), which is Hydra's override syntax.
ARGS_MACRO = "${args_no_hyphens}"


def quantized(value: float, q: float) -> float | int:
    """A q_* distribution's draw: rounded to a multiple of q, an int when q is one (as W&B's
    ``sweeps.params`` returns it, so that an int setting given a float q is caught here)."""
    rounded = round(value / q) * q
    return int(rounded) if isinstance(q, int) else float(rounded)


@dataclass(frozen=True)
class Distribution:
    """A W&B distribution: the keys it needs, the others it takes with W&B's defaults, and the
    values to compose, the ends of the range it draws from (W&B's sampled values as the agent
    would pass them: floats, ints for int_uniform and for a q_* distribution with an integer q)."""

    needs: tuple[str, ...]
    defaults: dict[str, float]
    ends: Callable[[dict], list]
    positive_min: bool = False  # the *_values log distributions take the logarithm of min
    integers: bool = False


def _bounded(transform: Callable[[float], float] = float) -> Callable[[dict], list]:
    def ends(p: dict) -> list:
        values = [transform(p["min"]), transform(p["max"])]
        return [quantized(v, p["q"]) for v in values] if "q" in p else values
    return ends


def _normal(transform: Callable[[float], float] = float) -> Callable[[dict], list]:
    def ends(p: dict) -> list:  # two standard deviations either side: 95% of the draws
        values = [transform(p["mu"] - 2 * p["sigma"]), transform(p["mu"] + 2 * p["sigma"])]
        return [quantized(v, p["q"]) for v in values] if "q" in p else values
    return ends


def _beta(p: dict) -> list:  # draws lie in (0, 1); the mean stands for them
    mean = p["a"] / (p["a"] + p["b"]) if p["a"] + p["b"] else 0.5
    return [quantized(mean, p["q"]) if "q" in p else mean]


def _negated_exp(x: float) -> float:
    return math.exp(-x)


BOUNDS = ("min", "max")
QUANTUM = {"q": 1.0}
NORMAL = {"mu": 0.0, "sigma": 1.0}
BETA = {"a": 1.0, "b": 1.0}
# W&B's distributions (the sweeps package's config/schema.json); "log_uniform" and its kin take
# exponents as bounds, the *_values ones the values themselves.
DISTRIBUTIONS: dict[str, Distribution] = {
    "uniform": Distribution(BOUNDS, {}, _bounded()),
    "int_uniform": Distribution(BOUNDS, {}, _bounded(int), integers=True),
    "q_uniform": Distribution(BOUNDS, QUANTUM, _bounded()),
    "log_uniform": Distribution(BOUNDS, {}, _bounded(math.exp)),
    "q_log_uniform": Distribution(BOUNDS, QUANTUM, _bounded(math.exp)),
    "log_uniform_values": Distribution(BOUNDS, {}, _bounded(), positive_min=True),
    "q_log_uniform_values": Distribution(BOUNDS, QUANTUM, _bounded(), positive_min=True),
    "inv_log_uniform": Distribution(BOUNDS, {}, lambda p: [_negated_exp(p["max"]), _negated_exp(p["min"])]),
    "inv_log_uniform_values": Distribution(BOUNDS, {}, _bounded(), positive_min=True),
    "normal": Distribution((), NORMAL, _normal()),
    "q_normal": Distribution((), {**NORMAL, **QUANTUM}, _normal()),
    "log_normal": Distribution((), NORMAL, _normal(math.exp)),
    "q_log_normal": Distribution((), {**NORMAL, **QUANTUM}, _normal(math.exp)),
    "beta": Distribution((), BETA, _beta),
    "q_beta": Distribution((), {**BETA, **QUANTUM}, _beta),
}
# The distributions that go with value/values rather than bounds.
LISTED = {"value": "constant", "values": "categorical"}


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _positive_int(value: Any) -> bool:
    return is_whole(value) and value > 0


# Every top-level key W&B documents, with what its value must be; the checks of method, metric,
# parameters, early_terminate and command follow in their own functions.
TOP_LEVEL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "program": (_string, "a file name (W&B's agent reads it even when the command does not use ${program})"),
    "entity": (_string, "a W&B entity (team or user name)"),
    "project": (_string, "a W&B project name"),
    "description": (_string, "text"),
    "name": (_string, "text"),
    "method": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    "metric": (lambda v: isinstance(v, dict), "a mapping: {name: val/ppl, goal: minimize}"),
    "parameters": (lambda v: isinstance(v, dict) and bool(v), "a mapping of settings to search, e.g. optimizer.lr: {values: [1.0e-3, 3.0e-3]}"),
    "early_terminate": (lambda v: isinstance(v, dict), "a mapping: {type: hyperband, min_iter: 1}"),
    "command": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
                f"a list of strings: [${{env}}, ${{interpreter}}, -m, lmexp, logger=wandb, {ARGS_MACRO}]"),
    "run_cap": (_positive_int, "a positive integer"),
}
# Required by W&B (program, method, parameters), by the method bayes and Hyperband (metric), and
# here (command: W&B's default one passes --key=value, which Hydra does not take), each with an example.
REQUIRED = {
    "program": "program: lmexp/__main__.py",
    "method": "method: bayes",
    "metric": "metric: {name: val/ppl, goal: minimize}",
    "parameters": "parameters: {optimizer.lr: {values: [1.0e-3, 3.0e-3]}}",
    "command": f"command: [${{env}}, ${{interpreter}}, -m, lmexp, logger=wandb, {ARGS_MACRO}]",
}


@dataclass
class SweepCheck:
    """A sweep file that passed: each parameter's values as the agent would pass them (the ends
    of a distribution's range), and the command lines composed, each value in at least one."""

    path: str
    values: dict[str, list] = field(default_factory=dict)
    command_lines: list[list[str]] = field(default_factory=list)

    def summary(self) -> str:
        count = sum(len(v) for v in self.values.values())
        return f"{self.path}: {len(self.values)} parameters, {count} values composed"


def check_sweep_file(path: str | Path) -> SweepCheck:
    """Check one W&B sweep file offline; every problem is one ConfigError naming the file, the
    key or parameter, and the fix."""
    name = str(path)
    sweep = _read(Path(path), name)
    _check_top_level(sweep, name)
    _check_metric(sweep["metric"], name)
    if "early_terminate" in sweep:
        _check_early_terminate(sweep["early_terminate"], name)
    fixed = _command_overrides(sweep["command"], name)
    values = {param: _parameter_values(param, entry, sweep["method"], name)
              for param, entry in sweep["parameters"].items()}
    both = sorted(set(values) & {o.split("=", 1)[0] for o in fixed})
    if both:
        raise ConfigError(f"{name}: parameter {both[0]}: the command sets it too ({both[0]}=...); "
                          f"remove it from one of the two")
    check = SweepCheck(name, values)
    # Every value composed at least once, not every combination: the i-th command line takes each
    # parameter's i-th value (its last, once it has no more), so a file costs as many compositions
    # as its longest list, not their product.
    for i in range(max(len(v) for v in values.values())):
        chosen = {param: listed[min(i, len(listed) - 1)] for param, listed in values.items()}
        check.command_lines.append(_compose(fixed, chosen, name))
    return check


def _read(path: Path, name: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}: cannot be read ({getattr(e, 'strerror', None) or e}); pass a W&B sweep "
                          f"file, e.g. sweeps/lstm_bayes.yaml") from None
    try:
        sweep = yaml.safe_load(text)  # PyYAML's safe loader, as wandb reads the file
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}: not valid YAML{where} ({problem}); fix the file's syntax") from None
    if not isinstance(sweep, dict):
        raise ConfigError(f"{name}: a sweep file is a mapping of program, method, metric, parameters and "
                          f"command; this one holds {type(sweep).__name__}")
    return sweep


def _check_top_level(sweep: dict, name: str) -> None:
    for key, value in sweep.items():
        if key not in TOP_LEVEL:
            raise ConfigError(f"{name}: {key} is not a key of a W&B sweep; use "
                              f"{', '.join(TOP_LEVEL)}")
        ok, expected = TOP_LEVEL[key]
        if not ok(value):
            raise ConfigError(f"{name}: {key}: {value!r} is not {expected}")
    for key, example in REQUIRED.items():
        if key not in sweep:
            raise ConfigError(f"{name}: {key} is missing; add {example}")


def _check_metric(metric: dict, name: str) -> None:
    for key in metric:
        if key not in METRIC_KEYS:
            raise ConfigError(f"{name}: metric.{key} is not a key of metric; use {', '.join(METRIC_KEYS)}")
    metric_name, goal = metric.get("name"), metric.get("goal")
    if metric_name not in METRIC_GOALS:
        raise ConfigError(f"{name}: metric.name: {metric_name!r} is not a metric lmexp logs after each "
                          f"validation; use one of {', '.join(METRIC_GOALS)}")
    if goal not in GOALS:
        raise ConfigError(f"{name}: metric.goal: {goal!r} is not minimize or maximize; add goal: "
                          f"{METRIC_GOALS[metric_name]}")
    if goal != METRIC_GOALS[metric_name]:
        raise ConfigError(f"{name}: metric.goal: {metric_name} is lower-is-better; set goal: {METRIC_GOALS[metric_name]}")
    if "target" in metric and not is_number(metric["target"]):
        raise ConfigError(f"{name}: metric.target: {metric['target']!r} is not a number; write one, e.g. 150.0")


def _check_early_terminate(early: dict, name: str) -> None:
    for key in early:
        if key not in EARLY_TERMINATE_KEYS:
            raise ConfigError(f"{name}: early_terminate.{key} is not a key of early_terminate; use "
                              f"{', '.join(EARLY_TERMINATE_KEYS)}")
    if early.get("type") != "hyperband":
        raise ConfigError(f"{name}: early_terminate.type: {early.get('type')!r}: W&B's only kind is hyperband; "
                          f"set type: hyperband")
    if "min_iter" not in early and not {"max_iter", "s"} <= set(early):
        raise ConfigError(f"{name}: early_terminate needs min_iter (the first validation to judge runs at), "
                          f"or max_iter and s; add min_iter: 1")
    # Iterations count logged values of the metric: one per validation, i.e. per epoch by default.
    for key, ok, expected in (("min_iter", _positive_int, "a positive integer (validations)"),
                              ("max_iter", _positive_int, "a positive integer (validations)"),
                              ("s", _positive_int, "a positive integer (brackets)"),
                              ("eta", lambda v: is_number(v) and v > 1, "a number above 1 (it keeps 1/eta of the runs)"),
                              ("strict", lambda v: isinstance(v, bool), "true or false")):
        if key in early and not ok(early[key]):
            raise ConfigError(f"{name}: early_terminate.{key}: {early[key]!r} is not {expected}")


def _command_overrides(command: list[str], name: str) -> list[str]:
    """The overrides the command fixes for every run (``logger=wandb``, ``model=lstm``)."""
    runs_lmexp = any(command[i:i + 2] == ["-m", "lmexp"] for i in range(len(command)))
    if not runs_lmexp:
        raise ConfigError(f"{name}: command: {' '.join(command)} does not run lmexp; write "
                          f"[${{env}}, ${{interpreter}}, -m, lmexp, logger=wandb, {ARGS_MACRO}]")
    after = command[command.index("lmexp", command.index("-m")) + 1:]
    fixed = [c for c in after if c != ARGS_MACRO]
    for item in fixed:
        if item.startswith("${"):  # ${args}, ${args_json}, ...: the other ways W&B passes parameters
            raise ConfigError(f"{name}: command: {item} passes the parameters in a form Hydra does not take "
                              f"(--key=value, JSON, ...); write {ARGS_MACRO}, which passes key=value")
        if item.startswith("-") or "=" not in item:
            raise ConfigError(f"{name}: command: {item!r}: after lmexp the command takes only key=value "
                              f"overrides and {ARGS_MACRO}; remove it")
    if command.count(ARGS_MACRO) != 1 or ARGS_MACRO not in after:
        raise ConfigError(f"{name}: command: {ARGS_MACRO} must appear once, after lmexp (found "
                          f"{command.count(ARGS_MACRO)}, {len(after) - len(fixed)} after lmexp): it is how the "
                          f"agent passes each run's parameters as key=value, Hydra's syntax; make it the last item")
    return fixed


def _parameter_values(param: Any, entry: Any, method: str, name: str) -> list:
    """The values of one parameter the agent may pass: a list's, or a distribution's ends."""
    where = f"{name}: parameter {param}"
    if not isinstance(param, str) or not PARAMETER_NAME.match(param):
        raise ConfigError(f"{where}: not a name W&B takes (letters, digits, _ . -); write the setting as "
                          f"lmexp names it, e.g. model.hidden_size")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {entry!r} is not a mapping; write {{values: [...]}}, {{value: ...}} or "
                          f"{{distribution: ..., min: ..., max: ...}}")
    if "parameters" in entry:
        raise ConfigError(f"{where}: nested parameters reach the command as one Python dict, which Hydra "
                          f"cannot read; write each setting as a dotted name ({param}.KEY: {{values: [...]}})")
    listed = [k for k in LISTED if k in entry]
    if len(listed) == 2:
        raise ConfigError(f"{where}: has both value and values; keep one")
    if listed:
        return _listed_values(listed[0], entry, where)
    distribution = entry.get("distribution")
    if distribution is None:
        raise ConfigError(f"{where}: needs values, value or a distribution; name the distribution "
                          f"(e.g. distribution: uniform) rather than leave W&B to infer it from the bounds' "
                          f"types (integer bounds would make it int_uniform)")
    if method == "grid":
        raise ConfigError(f"{where}: method grid takes values or value, not distribution {distribution}; list "
                          f"the values to try (values: [...]) or use method: random or bayes")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: distribution {distribution!r} is not one of W&B's; use one of "
                          f"{', '.join(DISTRIBUTIONS)} (or values: [...])")
    return _distribution_ends(distribution, entry, where)


def _listed_values(kind: str, entry: dict, where: str) -> list:
    allowed = {kind, "distribution"} | ({"probabilities"} if kind == "values" else set())
    extra = sorted(set(entry) - allowed)
    if extra:
        raise ConfigError(f"{where}: {extra[0]} does not go with {kind}; remove it")
    if entry.get("distribution", LISTED[kind]) != LISTED[kind]:
        raise ConfigError(f"{where}: {kind} goes with distribution {LISTED[kind]}, not "
                          f"{entry['distribution']}; remove the distribution or the {kind}")
    values = [entry["value"]] if kind == "value" else entry["values"]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: values must be a non-empty list, e.g. values: [128, 256]")
    probabilities = entry.get("probabilities")
    if probabilities is not None and (not isinstance(probabilities, list) or len(probabilities) != len(values)
                                      or not all(is_number(p) and p >= 0 for p in probabilities)):
        raise ConfigError(f"{where}: probabilities must list one non-negative number per value "
                          f"({len(values)} values)")
    for value in values:
        if value is None:
            raise ConfigError(f"{where}: null reaches lmexp as the text None, which Hydra reads as a string; "
                              f"write 'null' (quoted) for Hydra's null")
        if isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} reaches the command as a Python dict, which Hydra cannot "
                              f"read; sweep each of its settings as a parameter of its own")
    return values


def _distribution_ends(distribution: str, entry: dict, where: str) -> list:
    spec = DISTRIBUTIONS[distribution]
    known = {"distribution", *spec.needs, *spec.defaults}
    extra = sorted(set(entry) - known)
    if extra:
        raise ConfigError(f"{where}: {extra[0]} is not a key of distribution {distribution}; use "
                          f"{', '.join(sorted(known - {'distribution'}))}")
    missing = [k for k in spec.needs if k not in entry]
    if missing:
        raise ConfigError(f"{where}: distribution {distribution} needs {' and '.join(missing)}; add them")
    for key in known - {"distribution"}:
        if key in entry and not is_number(entry[key]):
            text = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(entry[key], str) else ""
            raise ConfigError(f"{where}: {key}: {entry[key]!r} is not a number{text}")
    p = {**spec.defaults, **{k: entry[k] for k in known - {"distribution"} if k in entry}}
    if spec.integers and not all(isinstance(p[k], int) for k in BOUNDS):
        raise ConfigError(f"{where}: int_uniform needs integer bounds, got min: {p['min']}, max: {p['max']}; "
                          f"use distribution: uniform for real numbers")
    if "min" in p and not p["min"] < p["max"]:
        raise ConfigError(f"{where}: min ({p['min']}) must be below max ({p['max']}); swap or widen them")
    if spec.positive_min and p["min"] <= 0:
        raise ConfigError(f"{where}: {distribution} needs min > 0 (it draws the logarithm uniformly), got "
                          f"min: {p['min']}; use a positive lower bound, e.g. 1.0e-6, or values: [0.0, ...] to "
                          f"include zero")
    for key, ok in (("q", lambda v: v > 0), ("sigma", lambda v: v >= 0), ("a", lambda v: v >= 0),
                    ("b", lambda v: v >= 0)):
        if key in p and not ok(p[key]):
            raise ConfigError(f"{where}: {key}: {p[key]} must be {'> 0' if key == 'q' else '>= 0'}")
    return spec.ends(p)


def _compose(fixed: list[str], chosen: dict[str, Any], name: str) -> list[str]:
    """The run's command line composed and validated as ``python -m lmexp`` would: its fixed
    overrides and one value per parameter, each written as W&B's agent writes it."""
    argv = fixed + [f"{param}={value}" for param, value in chosen.items()]
    try:
        settings = load_settings(compose(as_typed(argv)))
    except ConfigError as e:
        raise ConfigError(f"{name}: {_blamed(str(e), fixed, chosen)}: {e}") from None
    if "wandb" not in settings.logger:
        chosen = ",".join(settings.logger) or "none"
        raise ConfigError(f"{name}: command: the runs would log with logger={chosen}, not W&B, so W&B "
                          f"would never see the metric; add logger=wandb to the command")
    return argv


def _blamed(message: str, fixed: list[str], chosen: dict[str, Any]) -> str:
    """What to name for a composition error: the parameter (or the command's override) whose
    setting the message starts with, as lmexp's messages do; else the whole combination."""
    def names(key: str) -> bool:
        return re.match(rf"{re.escape(key)}(?=[=\s:;]|$)", message) is not None

    param = next((p for p in sorted(chosen, key=len, reverse=True) if names(p)), None)
    if param is not None:
        return f"parameter {param}"
    if any(names(o.split("=", 1)[0]) for o in fixed):
        return "command"
    together = " ".join(f"{p}={v}" for p, v in chosen.items())
    return f"parameters {together} together"


def shown(path: Path) -> str:
    """A path as the user would have typed it from here: relative when it is under this folder."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str]) -> None:
    with stopped_as_one_line("lmexp.sweeps", "nothing was written"), reported_as_one_line():
        if argv in (["--help"], ["-h"]):  # not a file named --help
            raise HelpRequested(f"usage: python -m lmexp.sweeps [FILE ...]: checks W&B sweep files offline "
                                f"(none given: every {shown(SWEEPS_DIR)}/*.yaml)")
        paths = argv or [shown(p) for p in sorted(SWEEPS_DIR.glob("*.yaml"))]
        if not paths:
            raise ConfigError(f"no sweep files given and none in {SWEEPS_DIR}; pass them: "
                              f"python -m lmexp.sweeps sweeps/*.yaml")
        for path in paths:
            print(check_sweep_file(path).summary(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
