"""The study runner: validation before anything runs, skip/resume, tables; one real tiny study."""

import json
import os

import pytest

from vdm_jax import study as study_lib
from vdm_jax.config import ConfigError

STUDY_FILE = '''
def get_study():
  return dict(
      name="tiny", config="configs/default.py:tiny", claim="v against eps on the tiny config.",
      seeds=SEEDS, overrides={"train.num_steps": 4, "train.sample_every": 0,
                              "train.checkpoint_every": 2},
      runs={"v": {"diffusion.prediction": "v", "model.prediction": "v"},
            "eps": {"diffusion.prediction": "eps", "model.prediction": "eps",
                    "diffusion.weighting": "eps"}},
      evaluation=dict(num_samples=4, num_real=4, num_frames=8, num_steps=2, batch_size=4,
                      metrics=("colour_drift",), cache_dir=""))
'''


def _study_file(tmp_path, seeds=(0,), body=STUDY_FILE) -> str:
  path = tmp_path / "tiny_study.py"
  path.write_text(body.replace("SEEDS", repr(tuple(seeds))))
  return str(path)


def test_bad_studies_fail_before_anything_runs(tmp_path):
  path = _study_file(tmp_path)
  with pytest.raises(ConfigError, match="does not have"):
    study_lib.load_study(path, only=["vv"])
  with pytest.raises(ConfigError, match="run v/seed0.*num_stepz"):
    study_lib.validate_study(study_lib.load_study(path, overrides={"train.num_stepz": 3}))
  with pytest.raises(ConfigError, match="unknown metrics"):
    study_lib.validate_study(study_lib.load_study(path, evaluation={"metrics": ("fvdd",)}))
  with pytest.raises(ConfigError, match="run eps/seed0"):
    study_lib.validate_study(study_lib.load_study(path, only=["eps"],
                                                  overrides={"optim.learning_rate": -1.0}))
  with pytest.raises(FileNotFoundError):
    study_lib.load_study(str(tmp_path / "missing.py"))


def test_flag_values_parse_back():
  assert study_lib.flag_value((8,)) == "(8,)"
  assert study_lib.flag_value((1, 2, 2)) == "(1,2,2)"
  assert study_lib.flag_value("eps") == "eps"


class FakeRunner:
  """Stands in for train.py / evaluate.py: records calls, writes results, can fail once."""

  def __init__(self, fail_on: str | None = None):
    self.calls, self.fail_on = [], fail_on

  def __call__(self, cmd, log_path):
    workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
    kind = "train" if cmd[1].endswith("train.py") else "eval"
    self.calls.append((kind, workdir))
    if self.fail_on and self.fail_on in workdir and kind == "train":
      raise RuntimeError("killed")
    if kind == "eval":
      out = next(a.split("=", 1)[1] for a in cmd if a.startswith("--output="))
      seed = int(next(a.split("=", 1)[1] for a in cmd if a.startswith("--seed=")))
      value = (1.0 if "/v/" in workdir else 3.0) + seed
      with open(out, "w") as f:
        json.dump({"metrics": {"colour_drift": value}, "summary": "ok",
                   "protocol": {"generated": {"checkpoint_step": 4}}}, f)
    return {"cpu_s": 60.0, "wall_s": 30.0}


def test_interrupted_study_resumes_where_it_stopped(tmp_path):
  study = study_lib.load_study(_study_file(tmp_path, seeds=(0, 1)))
  root = str(tmp_path / "runs")
  with pytest.raises(RuntimeError, match="killed"):
    study_lib.run_study(study, root, runner=FakeRunner(fail_on="eps"), log=lambda _: None)
  runner = FakeRunner()
  results = study_lib.run_study(study, root, runner=runner, log=lambda _: None)
  # The v runs (both seeds) finished before the kill: neither trained nor evaluated again.
  assert all("/eps/" in w for _, w in runner.calls)
  assert len(runner.calls) == 4  # eps seed0 and seed1: train + eval each
  row = results["rows"]["v"]["metrics"]["colour_drift"]
  assert row["n"] == 2 and row["mean"] == pytest.approx(1.5) and row["std"] == pytest.approx(0.7071, 1e-3)
  table = open(os.path.join(root, "tiny", "results.md")).read()
  assert "| v |" in table and "| eps |" in table and "3.5 ± 0.71" in table
  again = FakeRunner()
  study_lib.run_study(study, root, runner=again, log=lambda _: None)
  assert again.calls == []
  # A changed evaluation protocol re-evaluates, but does not retrain.
  changed = study_lib.load_study(_study_file(tmp_path, seeds=(0, 1)), evaluation={"num_steps": 3})
  third = FakeRunner()
  study_lib.run_study(changed, root, runner=third, log=lambda _: None)
  assert [k for k, _ in third.calls] == ["eval"] * 4


def test_changed_run_definition_is_refused(tmp_path):
  root = str(tmp_path / "runs")
  study = study_lib.load_study(_study_file(tmp_path), only=["v"])
  study_lib.run_study(study, root, runner=FakeRunner(), log=lambda _: None)
  changed = study_lib.load_study(_study_file(tmp_path), only=["v"], overrides={"train.num_steps": 5})
  with pytest.raises(ConfigError, match="another definition"):
    study_lib.run_study(changed, root, runner=FakeRunner(), log=lambda _: None)


def test_tiny_study_end_to_end(tmp_path):
  """Two real runs through train.py and scripts/evaluate.py, and the table they make."""
  study = study_lib.load_study(_study_file(tmp_path))
  results = study_lib.run_study(study, str(tmp_path / "runs"), log=lambda _: None)
  for name in ("v", "eps"):
    row = results["rows"][name]
    assert row["seeds"]["0"]["step"] == 4
    assert row["metrics"]["colour_drift_generated"]["n"] == 1
    assert row["metrics"]["colour_drift_generated"]["mean"] > 0
    assert row["metrics"]["train_cpu_s"]["mean"] > 0
  table = open(tmp_path / "runs" / "tiny" / "results.md").read()
  assert "colour_drift_ratio" in table and "| eps |" in table
  saved = json.load(open(tmp_path / "runs" / "tiny" / "results.json"))
  assert saved["evaluation"]["num_samples"] == 4 and saved["seeds"] == [0]
