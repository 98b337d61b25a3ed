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
import datetime
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from vdm_jax.config import ConfigError, ExperimentConfig, check_overrides
from vdm_jax.versions import library_versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def flag_value(value: Any) -> str:
  """A config value as ml_collections parses it from --config.<key>=<value>."""
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def train_command(study: Study, spec: RunSpec, workdir: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "train.py"), f"--config={study.config}",
          f"--workdir={workdir}"] + [f"--config.{k}={flag_value(v)}" for k, v in spec.overrides.items()]


def sample_command(protocol: StudyEval, seed: int, workdir: str, output_dir: str) -> list[str]:
  """sample.py: the run's EMA (or raw) samples, extended to num_frames, into output_dir."""
  p = protocol
  cmd = [sys.executable, os.path.join(REPO, "sample.py"), f"--workdir={workdir}",
         f"--output_dir={output_dir}", f"--num_samples={p.num_samples}", f"--num_frames={p.num_frames}",
         f"--sampler={p.sampler}", f"--num_steps={p.num_steps}", f"--seed={seed}",
         "--ema" if p.use_ema else "--noema"]
  return cmd + [f"--{k}={flag_value(v)}" for k, v in p.sample_flags.items()]


def eval_command(exp: ExperimentConfig, protocol: StudyEval, samples: str, output: str) -> list[str]:
  """scripts/evaluate.py: the samples against num_real clips of the run's dataset and eval split."""
  p = protocol
  cmd = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), f"--samples={samples}",
         f"--dataset={exp.data.name}", f"--split={exp.data.eval_split}", f"--num_frames={p.num_frames}",
         f"--frame_stride={exp.data.frame_stride}", f"--resolution={exp.data.resolution}",
         f"--num_real={p.num_real}", f"--metrics={','.join(p.metrics)}",
         f"--batch_size={p.batch_size}", f"--cache_dir={p.cache_dir}", f"--output={output}"]
  if exp.data.data_dir:
    cmd.append(f"--data_dir={exp.data.data_dir}")
  return cmd + [f"--{k}={flag_value(v)}" for k, v in p.eval_flags.items()]


Runner = Callable[[list[str], str], dict[str, float]]


def run_logged(cmd: list[str], log_path: str) -> dict[str, float]:
  """Runs cmd with its output in log_path; {"cpu_s", "wall_s"} of the child, or RuntimeError."""
  before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
  with open(log_path, "a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if code:
    with open(log_path) as f:
      tail = "".join(f.readlines()[-15:])
    raise RuntimeError(f"`{os.path.basename(cmd[1])}` exited with {code}; log {log_path}:\n{tail}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return {"cpu_s": round(cpu, 1), "wall_s": round(time.time() - start, 1)}


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _normal(overrides: dict[str, Any]) -> dict[str, Any]:
  return json.loads(json.dumps(overrides, default=str))


def train_run(study: Study, spec: RunSpec, workdir: str, runner: Runner) -> dict[str, Any]:
  """Trains (or resumes) one (run, seed) unless its marker says it finished with these overrides."""
  mark_path = os.path.join(workdir, TRAIN_MARK)
  mark = _read_json(mark_path)
  if mark is not None:
    if mark.get("overrides") != _normal(spec.overrides) or mark.get("config") != study.config:
      raise ConfigError(f"{workdir} was trained by another definition of run {spec.key} "
                        f"({mark.get('config')}, {mark.get('overrides')}); move it away or rename the run")
    return {**mark, "skipped": True}
  os.makedirs(workdir, exist_ok=True)
  cost = runner(train_command(study, spec, workdir), os.path.join(workdir, "study_train.log"))
  mark = {"config": study.config, "overrides": _normal(spec.overrides), "train": cost,
          "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  _write_json(mark_path, mark)
  return {**mark, "skipped": False}


def eval_path(spec: RunSpec, workdir: str) -> str:
  return os.path.join(workdir, f"{EVAL_PREFIX}.{spec.name}.json")


def samples_path(spec: RunSpec, workdir: str) -> str:
  return os.path.join(workdir, "study_samples", spec.name)


def eval_run(spec: RunSpec, exp: ExperimentConfig, workdir: str, runner: Runner) -> dict[str, Any]:
  """Samples and evaluates one trained (run, seed) unless its results hold its protocol already."""
  path = eval_path(spec, workdir)
  protocol = _normal(dataclasses.asdict(spec.evaluation))
  done = _read_json(path)
  if done is not None and done.get("study_protocol") == protocol:
    return {**done, "skipped": True}
  samples_dir = samples_path(spec, workdir)
  log = os.path.join(workdir, f"{EVAL_PREFIX}.{spec.name}.log")
  sample_cost = runner(sample_command(spec.evaluation, spec.seed, workdir, samples_dir), log)
  tmp = f"{path}.partial"
  cost = runner(eval_command(exp, spec.evaluation, os.path.join(samples_dir, "sample.npz"), tmp), log)
  results = _read_json(tmp)
  if results is None:
    raise RuntimeError(f"evaluate.py wrote no results to {tmp}")
  sampled = _read_json(os.path.join(samples_dir, "protocol.json")) or {}
  results.update(study_protocol=protocol, sampling=sampled,
                 eval_cost={k: round(sample_cost[k] + cost[k], 1) for k in cost})
  _write_json(path, results)
  os.remove(tmp)
  return {**results, "skipped": False}


def _mean_spread(values: list[float]) -> dict[str, float]:
  finite = [v for v in values if v is not None and math.isfinite(v)]
  n = len(finite)
  if not n:
    return {"mean": float("nan"), "std": float("nan"), "n": 0}
  mean = sum(finite) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
  return {"mean": mean, "std": std, "n": n}


def aggregate(study: Study, per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """{run: {metric: {mean, std, n}, train_cpu_s: ..., seeds: {...}}} in the study's row order."""
  rows = {}
  for name in study.runs:
    seeds = {spec.seed: per_seed[spec.key] for spec in study.specs()
             if spec.name == name and spec.key in per_seed}
    metrics = sorted({m for r in seeds.values() for m in r.get("metrics", {})})
    row = {m: _mean_spread([r["metrics"].get(m) for r in seeds.values()]) for m in metrics}
    row["train_cpu_s"] = _mean_spread([r["train"]["cpu_s"] for r in seeds.values()])
    row["eval_cpu_s"] = _mean_spread([r["eval_cost"]["cpu_s"] for r in seeds.values()])
    rows[name] = {"overrides": study.runs[name], "metrics": row,
                  "seeds": {str(s): {"metrics": r.get("metrics", {}), "step": r.get("step"),
                                     "train": r["train"], "eval": r["eval_cost"]}
                            for s, r in seeds.items()}}
  return rows


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0] if names else 'unknown CPU'} x {os.cpu_count()} cores"


def run_study(study: Study, root: str, *, runner: Runner = run_logged,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains and evaluates what is missing, then writes <root>/<name>/results.{json,md}.

  Returns the results dict. Interrupting it (or a failed run) loses nothing: a rerun skips what
  finished and train.py resumes a run from its latest checkpoint.
  """
  configs = validate_study(study)  # every run's config, before anything is trained
  base = os.path.join(root, study.name)
  per_seed: dict[str, dict[str, Any]] = {}
  specs = study.specs()
  for i, spec in enumerate(specs, 1):
    workdir = spec.workdir(base)
    log(f"[{study.name} {i}/{len(specs)}] {spec.key}: training ({workdir})")
    trained = train_run(study, spec, workdir, runner)
    if trained["skipped"]:
      log(f"[{study.name} {i}/{len(specs)}] {spec.key}: trained before, skipped")
    log(f"[{study.name} {i}/{len(specs)}] {spec.key}: sampling and evaluating {spec.evaluation.metrics}")
    evaluated = eval_run(spec, configs[spec.key], workdir, runner)
    per_seed[spec.key] = {"metrics": evaluated.get("metrics", {}), "train": trained["train"],
                          "eval_cost": evaluated["eval_cost"],
                          "step": evaluated.get("sampling", {}).get("checkpoint_step")}
    log(f"[{study.name} {i}/{len(specs)}] {spec.key}: {evaluated.get('summary', '')}")
  results = {
      "study": study.name, "claim": study.claim, "config": study.config,
      "overrides": study.overrides, "seeds": list(study.seeds),
      "evaluation": dataclasses.asdict(study.evaluation), "rows": aggregate(study, per_seed),
      "machine": _cpu_model(), "versions": library_versions(),
      "written_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": study_command(study, root),
  }
  _write_json(os.path.join(base, "results.json"), results)
  with open(os.path.join(base, "results.md"), "w") as f:
    f.write(markdown_table(results))
  log(f"[{study.name}] results: {os.path.join(base, 'results.md')}")
  return results


def study_command(study: Study, root: str) -> str:
  """The command that reproduces the table (the runner records how it was called)."""
  return " ".join(["python", "scripts/study.py"] + sys.argv[1:]) if sys.argv[0].endswith(
      "study.py") else f"python scripts/study.py --study studies/{study.name}.py --root {root}"


def _fmt(stat: dict[str, float], digits: int = 3) -> str:
  if not stat or stat.get("n", 0) == 0:
    return "-"
  mean, std = stat["mean"], stat["std"]
  text = f"{mean:.{digits}g}"
  return text if stat["n"] < 2 else f"{text} ± {std:.2g}"


def markdown_table(results: dict[str, Any]) -> str:
  """The study's table: a row per run, mean ± sample std over seeds (n = seeds), and its protocol."""
  rows = results["rows"]
  metrics = sorted({m for r in rows.values() for m in r["metrics"]} - {"train_cpu_s", "eval_cpu_s"})
  ev = results["evaluation"]
  lines = [f"# Study `{results['study']}`", "", results["claim"], "",
           f"Protocol: {ev['num_samples']} generated vs {ev['num_real']} real test clips, "
           f"{ev['num_frames']} frames, {ev['sampler']} {ev['num_steps']} steps, "
           f"{'EMA' if ev['use_ema'] else 'raw'} parameters, final checkpoint; base config "
           f"`{results['config']}` with {json.dumps(results['overrides'])}; seeds {results['seeds']} "
           "(mean ± sample std over seeds); CPU time per run = user + system seconds of the "
           f"train.py / evaluate.py processes on {results['machine']}.", "",
           f"Command: `{results['command']}` ({results['written_utc']})", "",
           "| run | overrides | n | " + " | ".join(metrics) + " | train CPU min | eval CPU min |",
           "|---|---|---|" + "---|" * (len(metrics) + 2)]
  for name, row in rows.items():
    m = row["metrics"]
    n = m["train_cpu_s"]["n"]
    cpu = [{k: v / 60 if k != "n" else v for k, v in m[key].items()}
           for key in ("train_cpu_s", "eval_cpu_s")]
    overrides = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "(base)"
    cells = [_fmt(m.get(metric, {})) for metric in metrics] + [_fmt(c, 2) for c in cpu]
    lines.append(f"| {name} | {overrides} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
