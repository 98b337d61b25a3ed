"""Running a study: the train.py, sample.py and evaluate.py commands of each (run, seed), each in a
subprocess with its CPU time measured, skipped when done, and the results gathered."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from vdm_jax.config import ConfigError, ExperimentConfig
from vdm_jax.study.spec import (
    EVAL_PREFIX,
    REPO,
    TRAIN_MARK,
    RunSpec,
    Study,
    StudyEval,
    resolve_run_refs,
    validate_study,
)
from vdm_jax.study.table import aggregate, markdown_table
from vdm_jax.versions import library_versions


def flag_value(value: Any) -> str:
  """A config value as ml_collections parses it from --config.<key>=<value>."""
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def train_command(study: Study, spec: RunSpec, workdir: str) -> list[str]:
  """train.py for the run; "@run:NAME" values become NAME's workdir (workdir is base/run/seedN)."""
  overrides = resolve_run_refs(spec.overrides, os.path.dirname(os.path.dirname(workdir)), spec.seed)
  return [sys.executable, os.path.join(REPO, "train.py"), f"--config={study.config}",
          f"--workdir={workdir}"] + [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]


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
