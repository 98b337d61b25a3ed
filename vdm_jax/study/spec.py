"""Studies: a declarative list of runs that one command trains, evaluates and tabulates.

A study file (studies/<name>.py) defines `get_study() -> dict` with the keys

    name          the study's name (its folder under the study root)
    config        the base config file, "configs/default.py" or "configs/default.py:variant"
    claim         what the study tests, and what the paper reports
    seeds         training seeds of every run (the sampling seed of evaluation is the same)
    overrides     {"section.key": value} applied to every run
    runs          {run_name: {"section.key": value, "evaluation": {...}}}: each row of the table;
                  the optional "evaluation" changes that row's protocol (e.g. sample_flags);
                  {"train_as": other_run, "evaluation": {...}} evaluates other_run's trained
                  model another way (rows that differ only in sampling share one training)
    evaluation    {num_samples, num_real, num_frames, sampler, num_steps, metrics, use_ema,
                   sample_flags, eval_flags, ...} (StudyEval's fields)

`run_study` trains each (run, seed) that is missing with train.py (which resumes an interrupted
run from its checkpoints), samples it with sample.py, evaluates the samples with
scripts/evaluate.py, and writes results.json and
results.md (mean +- sample standard deviation over seeds) in <root>/<name>. Each step runs in a
subprocess, so a crash or a kill loses nothing but the step in flight and the CPU time of each is
measured alone; a (run, seed) that finished is skipped. Every config is validated before the
first run starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from vdm_jax.config import ConfigError, ExperimentConfig, check_overrides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_MARK = "study_train.json"
EVAL_PREFIX = "study_eval"
STUDY_KEYS = ("name", "config", "claim", "seeds", "overrides", "runs", "evaluation")


@dataclasses.dataclass(frozen=True)
class StudyEval:
  """The evaluation protocol, the same for every run of a study (written beside every number)."""
  num_samples: int = 256
  num_real: int = 256
  num_frames: int = 16  # longer than the model's clips: extended by reconstruction guidance
  sampler: str = "ddim"
  num_steps: int = 64
  metrics: tuple[str, ...] = ("fvd", "colour_drift")
  use_ema: bool = True
  batch_size: int = 16
  cache_dir: str = "~/.cache/vdm_jax/fvd_stats"
  sample_flags: dict[str, Any] = dataclasses.field(default_factory=dict)  # more sample.py flags
  eval_flags: dict[str, Any] = dataclasses.field(default_factory=dict)  # more evaluate.py flags

  def __post_init__(self):
    object.__setattr__(self, "metrics", tuple(self.metrics))
    object.__setattr__(self, "sample_flags", dict(self.sample_flags))
    object.__setattr__(self, "eval_flags", dict(self.eval_flags))
    for name in ("num_samples", "num_real", "num_frames", "num_steps", "batch_size"):
      if getattr(self, name) < 1:
        raise ConfigError(f"study evaluation.{name}={getattr(self, name)} must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One (run, seed) of a study: its row name, seed, flattened config overrides and protocol."""
  name: str
  seed: int
  overrides: dict[str, Any]
  evaluation: StudyEval
  train_name: str = ""  # the run whose training this row uses (itself unless "train_as")

  @property
  def key(self) -> str:
    return f"{self.name}/seed{self.seed}"

  def workdir(self, base: str) -> str:
    return os.path.join(base, self.train_name or self.name, f"seed{self.seed}")


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  config: str
  claim: str
  seeds: tuple[int, ...]
  overrides: dict[str, Any]
  runs: dict[str, dict[str, Any]]
  evaluation: StudyEval

  def specs(self) -> list[RunSpec]:
    """Every (run, seed) in table order; a run's own overrides win over the study's."""
    return [RunSpec(name, seed, {**self.overrides, **_settings(run), "train.seed": seed},
                    self.run_evaluation(name), run.get("train_as", name))
            for name, run in self.runs.items() for seed in self.seeds]

  def run_evaluation(self, name: str) -> StudyEval:
    """The study's protocol with the run's own "evaluation" changes."""
    own = dict(self.runs[name].get("evaluation", {}))
    for key in ("sample_flags", "eval_flags"):
      if key in own:
        own[key] = {**getattr(self.evaluation, key), **own[key]}
    try:
      return dataclasses.replace(self.evaluation, **own)
    except TypeError as err:
      raise ConfigError(f"study {self.name!r}, run {name!r}: evaluation: {err}") from err


def _settings(run: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in run.items() if k not in ("evaluation", "train_as")}


RUN_REF = "@run:"  # an override "@run:NAME" is run NAME's workdir for the same seed (train.init_from)


def _check_run_refs(path: str, runs: dict[str, dict[str, Any]]) -> None:
  """A "@run:NAME" value must name a training run declared earlier (runs train in file order)."""
  names = list(runs)
  for i, (name, run) in enumerate(runs.items()):
    for key, value in _settings(run).items():
      other = value[len(RUN_REF):] if isinstance(value, str) and value.startswith(RUN_REF) else None
      if other is not None and (other not in names[:i] or "train_as" in runs[other]):
        raise ConfigError(f"{path}: run {name!r} sets {key}={value!r}, but {other!r} is not a training "
                          f"run declared before it (runs train in file order); runs: {names}")


def resolve_run_refs(overrides: dict[str, Any], base: str, seed: int) -> dict[str, Any]:
  """overrides with each "@run:NAME" replaced by base/NAME/seed<seed> (RunSpec.workdir's layout)."""
  return {k: os.path.join(base, v[len(RUN_REF):], f"seed{seed}")
          if isinstance(v, str) and v.startswith(RUN_REF) else v for k, v in overrides.items()}


def _resolve_train_as(path: str, runs: dict[str, dict[str, Any]]) -> None:
  """A "train_as" row takes its config from the row it names, and may set nothing else."""
  for name, run in runs.items():
    other = run.get("train_as")
    if other is None:
      continue
    if other not in runs or "train_as" in runs[other]:
      raise ConfigError(f"{path}: run {name!r} has train_as={other!r}, which is not a run that "
                        f"trains; runs: {sorted(runs)}")
    if _settings(run):
      raise ConfigError(f"{path}: run {name!r} trains as {other!r} and cannot change the config "
                        f"({sorted(_settings(run))}); only its evaluation")
    run.update(_settings(runs[other]))


def load_study(path: str, *, only: Sequence[str] = (), seeds: Sequence[int] = (),
               overrides: dict[str, Any] | None = None,
               evaluation: dict[str, Any] | None = None) -> Study:
  """Reads a study file; `only`/`seeds` select rows and seeds, `overrides`/`evaluation` amend it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"study file {path!r} not found; studies live in studies/*.py")
  spec = importlib.util.spec_from_file_location(f"_study_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_study"):
    raise ConfigError(f"{path} defines no get_study() -> dict")
  raw = dict(module.get_study())
  unknown = sorted(set(raw) - set(STUDY_KEYS))
  missing = [k for k in ("name", "config", "runs") if k not in raw]
  if unknown or missing:
    raise ConfigError(f"{path}: unknown keys {unknown}, missing keys {missing}; a study has {STUDY_KEYS}")
  runs = {str(k): dict(v) for k, v in raw["runs"].items()}
  _resolve_train_as(path, runs)
  _check_run_refs(path, runs)
  bad = sorted(set(only) - set(runs))
  if bad:
    raise ConfigError(f"--only names runs {bad} that {path} does not have; its runs: {sorted(runs)}")
  try:
    protocol = StudyEval(**{**raw.get("evaluation", {}), **(evaluation or {})})
  except TypeError as err:
    raise ConfigError(f"{path}: evaluation: {err}; fields: "
                      f"{[f.name for f in dataclasses.fields(StudyEval)]}") from err
  return Study(name=raw["name"], config=raw["config"], claim=raw.get("claim", ""),
               seeds=tuple(seeds or raw.get("seeds", (0,))),
               overrides={**raw.get("overrides", {}), **(overrides or {})},
               runs={k: v for k, v in runs.items() if not only or k in only}, evaluation=protocol)


def _config_file(study: Study) -> tuple[str, str]:
  path, _, variant = study.config.partition(":")
  path = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"study {study.name!r}: config file {study.config!r} not found")
  return path, variant


def build_config(study: Study, spec: RunSpec) -> Any:
  """The run's ConfigDict: the study's config file with the run's overrides applied."""
  path, variant = _config_file(study)
  module_spec = importlib.util.spec_from_file_location("_study_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  check_overrides([f"--config.{k}" for k in spec.overrides])
  config.update_from_flattened_dict(dict(spec.overrides))
  return config


def validate_study(study: Study) -> dict[str, ExperimentConfig]:
  """ExperimentConfig of every (run, seed); ConfigError naming the run if one is invalid."""
  from vdm_jax.evaluation import ALL_METRICS
  if not study.runs:
    raise ConfigError(f"study {study.name!r} has no runs to do")
  out = {}
  for spec in study.specs():
    bad = sorted(set(spec.evaluation.metrics) - set(ALL_METRICS))
    if bad:
      raise ConfigError(f"study {study.name!r}, run {spec.key}: unknown metrics {bad}; known: "
                        f"{list(ALL_METRICS)}")
    try:
      out[spec.key] = ExperimentConfig.from_config_dict(build_config(study, spec))
    except (ConfigError, ValueError, KeyError, AttributeError) as err:
      raise ConfigError(f"study {study.name!r}, run {spec.key}: {err}") from err
  return out


