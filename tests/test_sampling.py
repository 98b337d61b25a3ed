"""vdm_jax.generation: restore a tiny training run's checkpoint and sample from it (shapes, range,
determinism, 1 device from a checkpoint saved on 8, frame conditioning, extension, one compile),
the chunked sampler's guidance wiring with exact denoisers, and the error cases."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.default
from vdm_jax import checkpoints, diffusion, generation
from vdm_jax.denoiser import Conditioning
from vdm_jax.diffusion.schedule import alpha_sigma
from vdm_jax.model import abstract_model

T, RES = 4, 8


def micro_config(data_dir):
  """configs/default.py:tiny, smaller still: 4 frames of 8x8, one level, 2 train steps."""
  c = configs.default.get_config("tiny")
  c.data.update(num_frames=T, resolution=RES, data_dir=data_dir)
  c.model.update(base_channels=8, channel_mult=(1,), attention_resolutions=(RES,), image_size=RES,
                 head_dim=8)
  c.train.update(num_steps=2, checkpoint_every=2, log_every=1, sample_every=0)
  c.sample.update(num_samples=8, num_steps=2)
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2-step training run of the micro config on the 8 forced CPU devices."""
  from vdm_jax.train.loop import train_and_evaluate
  path = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(micro_config(str(tmp_path_factory.mktemp("tfds"))), path)
  return path


def options(model, **kwargs):
  """GenerateOptions from flat keywords, sampler fields included (as sample.py passes them)."""
  return generation.options_from(model.exp, **kwargs)


@pytest.fixture(scope="module")
def restored(workdir):
  return generation.restore_model(workdir)


def test_samples_shape_range_protocol_and_one_compile(workdir, restored):
  opts = options(restored, num_samples=3, num_steps=3, progress_chunks=3)
  videos, protocol = generation.generate(restored, opts)
  assert videos.shape == (3, T, RES, RES, 3) and videos.dtype == np.float32
  assert np.isfinite(videos).all() and videos.min() >= -1.0 and videos.max() <= 1.0
  assert videos.std() > 0.05  # not a constant image
  assert protocol["checkpoint_step"] == 2 and protocol["use_ema"]
  assert protocol["sampler"] == "ddim" and protocol["num_steps"] == 3 and protocol["seed"] == 0
  assert protocol["devices"]["count"] == 8 and protocol["mesh"]["data"] == 8
  assert protocol["batch_size"] == 8  # 3 rounded up to divide over 8 devices
  assert protocol["compilations"] == 1  # three chunks of the step loop, one compilation
  assert "ground_truth" not in protocol


def test_same_seed_same_ddim_samples_on_one_device_from_eight(workdir, restored):
  opts = options(restored, num_samples=2, num_steps=3, seed=5, progress_chunks=3)
  eight, _ = generation.generate(restored, opts)
  again, _ = generation.generate(restored, opts)
  np.testing.assert_array_equal(eight, again)
  other, protocol = generation.generate(restored, dataclasses.replace(opts, seed=6))
  assert protocol["compilations"] == 1  # another seed reuses the compiled sampler
  assert np.abs(other - eight).max() > 1e-2
  one_device = generation.restore_model(workdir, devices=jax.devices()[:1])
  assert one_device.mesh.devices.size == 1 and one_device.step == 2
  single, protocol = generation.generate(one_device, opts)
  assert protocol["batch_size"] == 2 and protocol["mesh"]["data"] == 1
  np.testing.assert_allclose(single, eight, atol=2e-4)


def test_raw_params_differ_from_ema(workdir, restored):
  raw = generation.restore_model(workdir, use_ema=False)
  diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), raw.params, restored.params)
  assert max(jax.tree.leaves(diffs)) > 0  # two Adam steps moved the params away from the EMA


@pytest.mark.parametrize("method", ["reconstruction", "replacement"])
def test_frame_conditioning_from_dataset_keeps_known_frames(restored, method):
  opts = options(restored, num_samples=2, num_steps=3, cond_frames=2, frame_method=method,
                                  reconstruction_weight=5.0)
  videos, protocol = generation.generate(restored, opts)
  truth = protocol["ground_truth"]
  assert truth.shape == (2, T, RES, RES, 3) and videos.shape == truth.shape
  np.testing.assert_array_equal(videos[:, :2], truth[:, :2])
  assert np.abs(videos[:, 2:] - truth[:, 2:]).max() > 1e-3  # the rest is generated
  assert protocol["frame_method"] == method and protocol["cond_frames"] == 2
  assert protocol["cond_source"] == "moving_shapes/test"


def test_extension_yields_the_asked_length(restored):
  opts = options(restored, num_samples=2, num_steps=3, num_frames=9, overlap=2,
                                  reconstruction_weight=5.0)
  videos, protocol = generation.generate(restored, opts)
  assert videos.shape == (2, 9, RES, RES, 3) and np.isfinite(videos).all()
  assert protocol["num_frames"] == 9 and protocol["overlap"] == 2
  assert protocol["frame_method"] == "reconstruction" and protocol["compilations"] == 1


def test_errors_before_compiling(tmp_path, workdir, restored):
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    generation.generate_from_workdir(str(tmp_path))
  os.makedirs(tmp_path / "checkpoints")
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    generation.generate_from_workdir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="available steps: \\[2\\]"):
    generation.restore_model(workdir, step=7)
  with pytest.raises(ValueError, match="unconditional"):
    generation.generate(restored, options(restored, guidance_weight=1.0))
  with pytest.raises(ValueError, match="not class-conditional"):
    generation.generate(restored, options(restored, labels=(1,)))
  with pytest.raises(ValueError, match="conditioning-frame channels"):
    generation.generate(restored, options(restored, cond_frames=1, frame_method="model"))
  with pytest.raises(ValueError, match="cond_frames=4 must be in"):
    generation.generate(restored, options(restored, cond_frames=4))
  with pytest.raises(ValueError, match="unconditional"):  # checked before reading any array
    generation.generate_from_workdir(workdir, guidance_weight=1.0)
  with pytest.raises(ValueError, match="unknown sampling options"):
    generation.generate_from_workdir(workdir, guidance=1.0)


def test_conditioning_video_errors(tmp_path, restored):
  from vdm_jax.metrics import video_io
  short = video_io.write_gif(str(tmp_path / "short.gif"), np.zeros((1, RES, RES, 3), np.uint8))
  with pytest.raises(ValueError, match="has 1 frames but cond_frames=2"):
    generation.generate(restored, options(restored, cond_frames=2, cond_video=short))
  wide = video_io.write_gif(str(tmp_path / "wide.gif"), np.zeros((3, RES, 2 * RES, 3), np.uint8))
  with pytest.raises(ValueError, match="is 16x8 but the model samples 8x8"):
    generation.generate(restored, options(restored, cond_frames=2, cond_video=wide))


def test_checkpoint_that_does_not_match_the_model(workdir, restored):
  exp = restored.exp
  other = dataclasses.replace(exp.model, base_channels=16, head_dim=16)
  _, target, _ = abstract_model(other, restored.mesh)
  with pytest.raises(ValueError, match="does not match the model"):
    checkpoints.restore_params(workdir, 2, target)


# ----- The chunked sampler's wiring, with exact denoisers -----

def _tied_frames_denoiser(num_frames):
  """Exact x prediction for videos whose frames all equal one value c ~ N(0, 1) per pixel."""

  def denoise_fn(z, logsnr, cond):
    alpha, sigma = alpha_sigma(logsnr)
    a, s = alpha.reshape(-1, 1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1, 1)
    c_hat = a * jnp.sum(z, axis=1, keepdims=True) / (num_frames * a**2 + s**2)
    return jnp.broadcast_to(c_hat, z.shape)

  return denoise_fn


def _run_chunks(chunk_fn, z, rng, cond, x_known, mask, num_steps, bounds):
  jitted = jax.jit(chunk_fn)
  for start, stop in zip(bounds[:-1], bounds[1:]):
    z = jitted(None, z, rng, cond, x_known, mask, np.int32(start), np.int32(stop))
  assert bounds[-1] == num_steps and jitted._cache_size() == 1
  return z


def test_chunked_reconstruction_guidance_matches_the_conditional_answer():
  t, n, steps = 6, 32, 16
  known = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (n, 1, 2, 2, 1)) * 0.5,
                           (n, t, 2, 2, 1))
  mask = jnp.zeros((n, t)).at[:, :2].set(1.0)
  config = diffusion.SamplerConfig("ddim", steps, clip_x=True)
  z = jax.random.normal(jax.random.key(2), known.shape)
  errors = {}
  for method, w_r in (("reconstruction", 4.0), ("replacement", 0.0)):
    chunk_fn = generation.make_chunk_fn_from_denoiser(
        lambda params: _tied_frames_denoiser(t), schedule=diffusion.CosineSchedule(),
        sampler_config=config, prediction="x", frame_method=method, reconstruction_weight=w_r)
    x = _run_chunks(chunk_fn, z, jax.random.key(3), None, known, mask, steps, [0, 5, 11, 16])
    np.testing.assert_array_equal(x[:, :2], known[:, :2])
    errors[method] = float(jnp.sqrt(jnp.mean(jnp.square(x[:, 2:] - known[:, 2:]))))
    if method == "reconstruction":  # the same as the diffusion core run in one piece
      base = diffusion.make_predict_fn(_tied_frames_denoiser(t), prediction="x", clip_x=False)
      ref = diffusion.sample_loop(
          diffusion.reconstruction_guidance(base, known, mask, w_r, clip_x=True), z,
          jax.random.key(3), schedule=diffusion.CosineSchedule(), config=config,
          post_step_fn=diffusion.replace_known_frames(known, mask))
      np.testing.assert_allclose(x, ref, atol=1e-5)
  assert errors["reconstruction"] < 0.05, errors  # the conditional answer: every frame = known
  assert errors["replacement"] > 2 * errors["reconstruction"], errors


def _class_denoiser(z, logsnr, cond):
  shift = cond.labels.astype(jnp.float32).reshape(-1, 1, 1, 1, 1)
  return jnp.tanh(0.5 * z + 0.1 * shift)


def test_guidance_weight_zero_equals_the_conditional_model():
  num_classes, steps = 3, 6
  z = jax.random.normal(jax.random.key(0), (4, 3, 2, 2, 1))
  cond = Conditioning(labels=jnp.array([0, 1, 2, 1]))
  zeros = jnp.zeros((4, 3))
  outs = {}
  for name, w in (("none", 0.0), ("zero_per_frame", jnp.zeros(3)), ("rising", jnp.array([0., 1, 2]))):
    chunk_fn = generation.make_chunk_fn_from_denoiser(
        lambda params: _class_denoiser, schedule=diffusion.CosineSchedule(),
        sampler_config=diffusion.SamplerConfig("ddim", steps), prediction="x",
        num_classes=num_classes, guidance_weight=w)
    outs[name] = _run_chunks(chunk_fn, z, jax.random.key(1), cond, z, zeros, steps, [0, 2, 6])
  np.testing.assert_allclose(outs["zero_per_frame"], outs["none"], atol=1e-6)
  np.testing.assert_allclose(outs["rising"][:, 0], outs["none"][:, 0], atol=1e-6)  # w = 0 there
  assert float(jnp.abs(outs["rising"][:, 2] - outs["none"][:, 2]).max()) > 1e-3


def test_default_output_dirs_differ_when_the_options_do():
  base = {"checkpoint_step": 1500, "sampler": "ddim", "num_steps": 64, "seed": 0, "guidance_weight": 0.0,
          "cond_frames": 0, "frame_method": None, "num_frames": 8, "train_num_frames": 8}
  variants = [base, {**base, "guidance_weight": 1.5},
              {**base, "cond_frames": 4, "frame_method": "reconstruction"},
              {**base, "cond_frames": 4, "frame_method": "replacement"}, {**base, "num_frames": 32},
              {**base, "seed": 1}, {**base, "sampler": "ancestral"}]
  names = [os.path.basename(generation.default_output_dir("w", p)) for p in variants]
  assert names[0] == "sample_00001500_ddim64_seed0"
  assert names[1] == "sample_00001500_ddim64_cfg1.5_seed0"
  assert len(set(names)) == len(names)


def test_evaluate_from_a_workdir_samples_as_many_frames_as_the_real_clips(workdir, tmp_path):
  """scripts/evaluate.py --workdir: the model's 4-frame clips are extended to the real 6 frames."""
  from vdm_jax import evaluation
  from vdm_jax.data import DataConfig
  real = np.random.default_rng(0).uniform(-1, 1, (2, 6, RES, RES, 3)).astype(np.float32)
  res = evaluation.evaluate(DataConfig(name="fake", num_frames=6, resolution=RES), workdir=workdir,
                            num_samples=2, num_steps=2, metrics=("colour_drift",),
                            output=str(tmp_path / "r.json"), real_batches=iter([real]))
  gen = res["protocol"]["generated"]
  assert gen["shape"] == [6, RES, RES, 3] and gen["count"] == 2
  assert gen["num_frames"] == 6 and gen["train_num_frames"] == T and gen["checkpoint_step"] == 2
  assert np.isfinite(res["metrics"]["colour_drift_generated"])


# ----- Fixed-seed samples pinned across refactors -----

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "samples.npz")
GOLDEN_CASES = {
    "ddim": dict(num_samples=3, num_steps=4, seed=7),
    "ancestral": dict(num_samples=2, sampler="ancestral", num_steps=4, gamma=0.1, seed=1),
    "reconstruction_extend": dict(num_samples=2, num_steps=3, cond_frames=2, num_frames=6,
                                  overlap=2, reconstruction_weight=5.0, seed=3),
}
# Written by tests/golden/make_golden.py. Equal bit for bit on the machine that wrote it; XLA CPU
# may round differently on another CPU kind, hence a tolerance far below any behaviour change.
GOLDEN_ATOL = 2e-5


def golden_samples(workdir):
  """The pinned cases sampled from the micro run: {name: float32 videos}, plus the raw params."""
  model = generation.restore_model(workdir)
  out = {}
  for name, kwargs in GOLDEN_CASES.items():
    videos, protocol = generation.generate(model, options(model, **kwargs))
    out[name] = videos
    if "ground_truth" in protocol:
      out[name + "_truth"] = protocol["ground_truth"]
  raw = generation.restore_model(workdir, use_ema=False)
  total = sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(raw.params))  # float32 sums
  out["param_checksum"] = np.array([float(total)])
  return out


def test_fixed_seed_samples_equal_the_pinned_ones(workdir):
  """Training two steps and sampling (DDIM, ancestral, reconstruction-guided extension) gives the
  videos pinned in tests/golden/samples.npz: a refactor that changes behaviour fails here."""
  got = golden_samples(workdir)
  with np.load(GOLDEN) as pinned:
    assert sorted(pinned.files) == sorted(got)
    for name in pinned.files:
      np.testing.assert_allclose(got[name], pinned[name], rtol=0 if name != "param_checksum"
                                 else 1e-6, atol=GOLDEN_ATOL, err_msg=name)
