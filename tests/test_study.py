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
    args = dict(a[2:].split("=", 1) for a in cmd[2:] if "=" in a)
    kind = os.path.basename(cmd[1])[:-3]  # train, sample or evaluate
    workdir = args.get("workdir") or os.path.dirname(os.path.dirname(os.path.dirname(args["samples"])))
    self.calls.append((kind, workdir))
    if self.fail_on and self.fail_on in workdir and kind == "train":
      raise RuntimeError("killed")
    if kind == "sample":
      os.makedirs(args["output_dir"], exist_ok=True)
      with open(os.path.join(args["output_dir"], "protocol.json"), "w") as f:
        json.dump({"checkpoint_step": 4, "seed": int(args["seed"])}, f)
    if kind == "evaluate":
      seed = json.load(open(os.path.join(os.path.dirname(args["samples"]), "protocol.json")))["seed"]
      value = (1.0 if "/v/" in workdir else 3.0) + seed
      with open(args["output"], "w") as f:
        json.dump({"metrics": {"colour_drift": value}, "summary": "ok"}, f)
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
  assert len(runner.calls) == 6  # eps seed0 and seed1: train, sample, evaluate each
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
  assert [k for k, _ in third.calls] == ["sample", "evaluate"] * 4


def test_changed_run_definition_is_refused(tmp_path):
  root = str(tmp_path / "runs")
  study = study_lib.load_study(_study_file(tmp_path), only=["v"])
  study_lib.run_study(study, root, runner=FakeRunner(), log=lambda _: None)
  changed = study_lib.load_study(_study_file(tmp_path), only=["v"], overrides={"train.num_steps": 5})
  with pytest.raises(ConfigError, match="another definition"):
    study_lib.run_study(changed, root, runner=FakeRunner(), log=lambda _: None)


MICRO_STUDY = '''
def get_study():
  micro = {"data.num_frames": 4, "data.resolution": 8, "data.data_dir": DATA_DIR,
           "model.base_channels": 8, "model.channel_mult": (1,), "model.attention_resolutions": (),
           "model.head_dim": 8, "model.emb_mlp_layers": 1, "model.image_size": 8,
           "model.norm_groups": 4, "optim.schedule": "constant", "train.sample_every": 0,
           "train.checkpoint_every": 2, "sample.num_steps": 2, "sample.num_samples": 4}
  return dict(
      name="micro", config="configs/default.py:tiny", claim="2 against 4 steps.", seeds=(0,),
      overrides=micro, runs={"short": {"train.num_steps": 2}, "long": {"train.num_steps": 4}},
      evaluation=dict(num_samples=4, num_real=4, num_frames=4, num_steps=2, batch_size=4,
                      metrics=("colour_drift",), cache_dir=""))
'''


def test_micro_study_end_to_end(tmp_path, monkeypatch):
  """Two real runs through train.py, sample.py and scripts/evaluate.py, and the table they make.

  The rows differ only in train.num_steps (a constant learning rate), so with one compilation
  cache the second run's train.py, sample.py and evaluate.py compile nothing new."""
  for name, value in {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}.items():
    monkeypatch.setenv(name, value)
  path = tmp_path / "micro.py"
  path.write_text(MICRO_STUDY.replace("DATA_DIR", repr(str(tmp_path / "data"))))
  results = study_lib.run_study(study_lib.load_study(str(path)), str(tmp_path / "runs"),
                                log=lambda _: None)
  for name, steps in (("short", 2), ("long", 4)):
    row = results["rows"][name]
    assert row["seeds"]["0"]["step"] == steps
    assert row["metrics"]["colour_drift_generated"]["n"] == 1
    assert row["metrics"]["colour_drift_generated"]["mean"] > 0
    assert row["metrics"]["train_cpu_s"]["mean"] > 0
  table = open(tmp_path / "runs" / "micro" / "results.md").read()
  assert "colour_drift_ratio" in table and "| long |" in table
  saved = json.load(open(tmp_path / "runs" / "micro" / "results.json"))
  assert saved["evaluation"]["num_samples"] == 4 and saved["seeds"] == [0]


def test_a_run_can_change_its_own_protocol(tmp_path):
  body = STUDY_FILE.replace('"diffusion.weighting": "eps"}}', '"diffusion.weighting": "eps", '
                            '"evaluation": {"sample_flags": {"overlap": 2}, "num_steps": 3}}}')
  study = study_lib.load_study(_study_file(tmp_path, body=body))
  specs = {s.name: s for s in study.specs()}
  assert specs["v"].evaluation.sample_flags == {} and specs["v"].evaluation.num_steps == 2
  assert specs["eps"].evaluation.sample_flags == {"overlap": 2}
  assert specs["eps"].evaluation.num_steps == 3
  assert "--overlap=2" in study_lib.sample_command(specs["eps"].evaluation, 0, "w", "o")
  assert "evaluation" not in specs["eps"].overrides


def test_rows_that_differ_only_in_sampling_share_one_training(tmp_path):
  body = STUDY_FILE.replace('"diffusion.weighting": "eps"}}', '"diffusion.weighting": "eps"}, '
                            '"eps_replacement": {"train_as": "eps", "evaluation": '
                            '{"sample_flags": {"frame_method": "replacement"}}}}')
  study = study_lib.load_study(_study_file(tmp_path, body=body))
  runner = FakeRunner()
  results = study_lib.run_study(study, str(tmp_path / "runs"), runner=runner, log=lambda _: None)
  assert [k for k, _ in runner.calls].count("train") == 2  # v and eps; eps_replacement reuses eps
  assert results["rows"]["eps_replacement"]["metrics"]["colour_drift"]["mean"] == 3.0
  bad = STUDY_FILE.replace('"diffusion.weighting": "eps"}}', '"diffusion.weighting": "eps"}, '
                           '"w": {"train_as": "eps", "train.num_steps": 9}}')
  with pytest.raises(ConfigError, match="cannot change the config"):
    study_lib.load_study(_study_file(tmp_path, body=bad))


def test_a_run_starts_from_an_earlier_runs_workdir_of_the_same_seed(tmp_path):
  # Claim 5's rows: "@run:NAME" in an override is NAME's workdir for the same seed.
  body = STUDY_FILE.replace('"diffusion.weighting": "eps"}}', '"diffusion.weighting": "eps"}, '
                            '"from_v": {"train.init_from": "@run:v", "optim.trainable": "temporal"}}')
  study = study_lib.load_study(_study_file(tmp_path, seeds=(0, 1), body=body), only=["from_v"])
  runner = FakeRunner()
  study_lib.run_study(study, str(tmp_path / "runs"), runner=runner, log=lambda _: None)
  spec = [s for s in study.specs() if s.seed == 1][0]
  cmd = study_lib.train_command(study, spec, spec.workdir(str(tmp_path / "runs" / "tiny")))
  assert f"--config.train.init_from={tmp_path}/runs/tiny/v/seed1" in cmd
  for ref in ("@run:eps_later", "@run:from_v"):  # declared later or itself, or no such run
    bad = body.replace('"@run:v"', f'"{ref}"')
    with pytest.raises(ConfigError, match="not a training run declared before it"):
      study_lib.load_study(_study_file(tmp_path, body=bad))


@pytest.mark.parametrize("path", sorted(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies", f)
    for f in os.listdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "studies")) if f.endswith(".py")))
def test_every_shipped_study_validates(path):
  study = study_lib.load_study(path)
  configs = study_lib.validate_study(study)
  assert len(configs) == len(study.runs) * len(study.seeds) >= 2
