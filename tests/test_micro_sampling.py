"""sample.py's micro-conditioning plumbing: --motion / --fps options, their checks and defaults, and
the value reaching the sampler's Conditioning (a recording chunk function: nothing compiles)."""

import jax
import numpy as np
import pytest

import configs.default
from vdm_jax import generation
from vdm_jax.config import ExperimentConfig
from vdm_jax.generation import run
from vdm_jax.parallel import make_mesh


def _exp(micro=("motion",)) -> ExperimentConfig:
  c = configs.default.get_config("tiny")
  c.data.name = "moving_shapes_speeds"
  c.model.micro_conditioning = micro
  return ExperimentConfig.from_config_dict(c)


def test_options_are_checked_and_defaulted_before_anything_compiles():
  plain, motion = _exp(()), _exp()
  with pytest.raises(ValueError, match="not trained with motion conditioning"):
    generation.plan(plain, generation.options_from(plain, motion=20.0), 1)
  with pytest.raises(ValueError, match="not trained with fps conditioning"):
    generation.plan(motion, generation.options_from(motion, fps=8.0), 1)
  with pytest.raises(ValueError, match="finite and >= 0"):
    generation.plan(motion, generation.options_from(motion, motion=-1.0), 1)
  assert generation.plan(plain, generation.options_from(plain), 1).micro == ()
  asked = generation.plan(motion, generation.options_from(motion, motion=30.0), 1, {"motion": 9.0})
  assert asked.micro == (("motion", 30.0),)
  default = generation.plan(motion, generation.options_from(motion), 1, {"motion": 9.0, "fps": 8.0})
  assert default.micro == (("motion", 9.0),)


def test_the_asked_motion_reaches_the_samplers_conditioning(monkeypatch):
  seen = []

  def fake_make_chunk_fn(graphdef, rest, **kwargs):
    def chunk_fn(params, z, rng, cond, x_known, known_mask, start, stop):
      seen.append(None if cond.motion is None else np.asarray(cond.motion))
      return z
    return chunk_fn

  monkeypatch.setattr(run, "make_chunk_fn", fake_make_chunk_fn)
  exp = _exp()
  model = generation.SamplingModel(exp, None, None, None, make_mesh(devices=jax.devices()[:1]), 1,
                                   manifest={"dataset": {"micro_medians": {"motion": 7.5}}})
  with jax.disable_jit():
    _, protocol = generation.generate(model, generation.options_from(
        exp, num_samples=2, num_steps=2, progress_chunks=1, motion=25.0))
    assert protocol["micro_conditioning"] == {"motion": 25.0}
    np.testing.assert_array_equal(seen.pop(), [25.0, 25.0])
    _, protocol = generation.generate(model, generation.options_from(
        exp, num_samples=2, num_steps=2, progress_chunks=1))
  np.testing.assert_array_equal(seen.pop(), [7.5, 7.5])  # the training set's median, from the manifest
  assert protocol["micro_conditioning"] == {"motion": 7.5}
  assert "motion25" in run.default_output_dir("w", {**protocol, "micro_conditioning": {"motion": 25.0}})


@pytest.mark.parametrize("micro,conditioned", [(("fps", "motion"), True), (("motion",), False)])
def test_sample_py_fps_conditions_only_an_fps_conditioned_model(monkeypatch, tmp_path, micro, conditioned):
  """sample.py --fps sets the files' rate, and for a model micro-conditioned on fps also its value."""
  seen = {}

  def fake_generate(workdir, **kwargs):
    seen.update(kwargs)
    return np.zeros((1, 2, 4, 4, 3), np.float32), {"checkpoint_step": 1}

  monkeypatch.setattr(run.checkpoints, "read_experiment", lambda *a, **k: (_exp(micro), 1, {}))
  monkeypatch.setattr(run, "generate_from_workdir", fake_generate)
  monkeypatch.setattr(run, "write_samples", lambda *a, **k: None)
  run.sample_and_save("w", str(tmp_path), fps=24, motion=5.0)
  assert seen["motion"] == 5.0 and seen.get("fps") == (24.0 if conditioned else None)
