"""scripts/evaluate.py and vdm_jax.evaluation: the comparison on arrays, the results JSON and its
protocol, the real dataset path through the script, FVD with the stats cache, clear errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vdm_jax import evaluation
from vdm_jax.data import DataConfig
from vdm_jax.metrics import frame_metrics, fvd, video_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _videos(n, t=10, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, t, size, size, 3), dtype=np.uint8)


def _fake_batches(videos, batch=3):
  for i in range(0, len(videos), batch):
    yield videos[i:i + batch].astype(np.float32) / 127.5 - 1.0  # as the data pipeline gives them


def test_evaluate_prediction_and_drift_from_npz(tmp_path):
  truth = _videos(3, size=16)
  rng = np.random.default_rng(1)
  k = 2
  samples = np.repeat(truth, k, axis=0).astype(np.int32) + rng.normal(0, 10, (3 * k,) + truth.shape[1:])
  samples = np.clip(samples, 0, 255).astype(np.uint8)
  samples[:, 0] = np.repeat(truth[:, 0], k, axis=0)  # the given first frame
  np.savez(tmp_path / "s.npz", videos=samples, ground_truth=truth)
  config = DataConfig(name="fake", num_frames=10, resolution=16)
  res = evaluation.evaluate(config, samples=str(tmp_path / "s.npz"), metrics=("colour_drift", "psnr", "ssim"),
                            best_of_k=k, num_cond_frames=1, real_batches=_fake_batches(truth))
  stored = json.load(open(tmp_path / "eval_results.json"))
  assert stored["metrics"] == pytest.approx(res["metrics"])
  expected = frame_metrics.frame_prediction_metrics(samples.reshape(3, k, *truth.shape[1:]), truth,
                                                     num_cond_frames=1, metrics=("psnr",))
  assert stored["metrics"]["psnr"] == pytest.approx(expected["psnr"], rel=1e-6)
  assert 20 < stored["metrics"]["psnr"] < 40
  proto = stored["protocol"]
  assert proto["generated"]["count"] == 6 and proto["generated"]["shape"] == [10, 16, 16, 3]
  assert proto["real"]["count"] == 3 and proto["real"]["dataset"] == "fake"
  assert proto["real"]["num_frames"] == 10 and proto["real"]["frame_stride"] == 1
  assert proto["frame_prediction"]["best_of_k"] == 2 and proto["frame_prediction"]["predicted_frames"] == 9
  assert proto["library_versions"]["jax"] == jax.__version__
  assert "colour_drift" in proto and "command" in proto
  assert "psnr" in stored["summary"] and "6 generated vs 3 real fake/test" in stored["summary"]
  assert "\n" not in stored["summary"]


@pytest.mark.slow
def test_evaluate_fvd_with_real_stats_cache(tmp_path):
  real, gen = _videos(2, t=9, seed=0), _videos(2, t=9, seed=1)
  np.savez(tmp_path / "g.npz", videos=gen)
  extractor = fvd.I3DFeatureExtractor(batch_size=2, devices=jax.devices()[:2])
  config = DataConfig(name="fake", num_frames=9, resolution=16)
  kwargs = dict(samples=str(tmp_path / "g.npz"), metrics=("fvd", "colour_drift"),
                cache_dir=str(tmp_path / "cache"), extractor=extractor)
  first = evaluation.evaluate(config, real_batches=_fake_batches(real), **kwargs)
  expected = fvd.fvd_from_features(extractor(real), extractor(gen))
  assert first["metrics"]["fvd"] == pytest.approx(expected, rel=1e-6)
  assert first["protocol"]["fvd"]["real_stats_cache_hit"] is False
  assert first["protocol"]["fvd"]["covariance"].startswith("unbiased")
  second = evaluation.evaluate(config, real_batches=iter(()), **kwargs)  # nothing to read: must hit
  assert second["protocol"]["fvd"]["real_stats_cache_hit"] is True
  assert second["metrics"] == pytest.approx(first["metrics"])


def test_clear_errors_before_expensive_work(tmp_path):
  config = DataConfig(name="fake", num_frames=8, resolution=16)
  np.savez(tmp_path / "short.npz", videos=_videos(2, t=8))
  with pytest.raises(ValueError, match="at least 9 frames"):
    evaluation.evaluate(config, samples=str(tmp_path / "short.npz"), metrics=("fvd",), real_batches=iter(()))
  with pytest.raises(FileNotFoundError):
    evaluation.evaluate(config, samples=str(tmp_path / "missing.npz"), real_batches=iter(()))
  with pytest.raises(ValueError, match="exactly one"):
    evaluation.evaluate(config, real_batches=iter(()))
  with pytest.raises(ValueError, match="Unknown metrics"):
    evaluation.evaluate(config, samples=str(tmp_path / "short.npz"), metrics=("fid",), real_batches=iter(()))
  np.savez(tmp_path / "ok.npz", videos=_videos(2, t=10, size=16))
  with pytest.raises(ValueError, match="must match|set --num_frames"):
    evaluation.evaluate(DataConfig(name="fake", num_frames=10, resolution=32),
                        samples=str(tmp_path / "ok.npz"), metrics=("colour_drift",),
                        real_batches=_fake_batches(_videos(2, size=32)))
  with pytest.raises(FileNotFoundError, match="pass the --workdir of a training run"):
    evaluation.evaluate(config, workdir=str(tmp_path), num_samples=2, metrics=("colour_drift",),
                        real_batches=iter(()))


def test_script_on_a_folder_of_videos_against_the_embedded_dataset(tmp_path):
  """The real dataset path: moving_shapes is built offline into data_dir on first use."""

  gen = _videos(3, t=10, size=32)
  folder = tmp_path / "samples"
  video_io.save_videos(str(folder), gen)  # each sample as .mp4 (upscaled to 128) and .gif
  loaded, _ = evaluation.load_videos(str(folder))
  assert loaded.shape == (3, 10, 128, 128, 3)  # one format only, not both
  assert video_io.match_resolution(loaded, 32).shape == (3, 10, 32, 32, 3)
  out = tmp_path / "res.json"
  env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # as a user runs it
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  cmd = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), f"--samples={folder}",
         "--dataset=moving_shapes", f"--data_dir={tmp_path / 'data'}", "--num_frames=10", "--resolution=32",
         "--metrics=colour_drift", f"--output={out}", "--cache_dir="]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.load(open(out))
  assert res["protocol"]["real"]["dataset"] == "moving_shapes" and res["protocol"]["real"]["count"] == 3
  assert res["metrics"]["colour_drift_real"] >= 0 and res["metrics"]["colour_drift_generated"] > 0
  assert res["summary"] in proc.stdout
  bad = subprocess.run(cmd[:2] + ["--samples=/nonexistent.npz", "--dataset=moving_shapes"], env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "No samples at" in bad.stderr and "Traceback" not in bad.stderr
