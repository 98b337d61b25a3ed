"""User-given dataset names stay inside the data directory; a failed build leaves no folder behind."""

import os
import subprocess
import sys

import pytest

from vdm_jax import data
from vdm_jax.data import paths, registry
from vdm_jax.data.builders import moving_shapes, video_folder

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "scripts", "make_video_dataset.py")
BAD_NAMES = ["..", "../x", "../../x", "a/../../b", "/abs", "a/b", "a\\b", "", "."]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_leave_the_data_dir_are_refused_in_one_line(name, tmp_path):
  with pytest.raises(ValueError, match="must be one plain folder name") as err:
    paths.check_folder_name(name)
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match="one plain folder name"):
    data.DataConfig(name=f"folder/{name}")
  if name:  # "folder/" alone is an unknown name to the registry
    with pytest.raises(ValueError, match="one plain folder name"):
      registry.get_spec(f"folder/{name}")
  with pytest.raises(ValueError, match="one plain folder name"):
    video_folder.make_folder_dataset(str(tmp_path), name, str(tmp_path / "data"))
  assert not (tmp_path / "data").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["myclips", "my.clips", "a..b", "UCF-101_v2"])
def test_plain_names_pass(name):
  assert paths.check_folder_name(name) == name
  assert registry.get_spec(f"folder/{name}").tfds_name == f"video_folder/{name}"


def test_removed_on_failure_removes_only_what_the_block_created(tmp_path):
  (tmp_path / "video_folder" / "other").mkdir(parents=True)
  (tmp_path / "video_folder" / "other" / "keep.txt").write_text("x")
  target = tmp_path / "video_folder" / "new"
  with pytest.raises(RuntimeError):
    with paths.removed_on_failure(str(tmp_path), str(target)):
      (target / "1.0.0").mkdir(parents=True)
      (tmp_path / "downloads" / "extracted").mkdir(parents=True)
      raise RuntimeError("the build failed")
  assert sorted(os.listdir(tmp_path)) == ["video_folder"]
  assert os.listdir(tmp_path / "video_folder") == ["other"]
  assert (tmp_path / "video_folder" / "other" / "keep.txt").exists()
  with paths.removed_on_failure(str(tmp_path), str(target)):  # success keeps everything
    target.mkdir()
  assert target.exists()


def test_a_failed_embedded_build_leaves_no_folder(tmp_path, monkeypatch):
  def fail(self, dl_manager):
    raise RuntimeError("generation failed")
  monkeypatch.setattr(moving_shapes.MovingShapes, "_split_generators", fail)
  data_dir = tmp_path / "tfds"
  with pytest.raises(RuntimeError, match="generation failed"):
    registry.get_builder("moving_shapes", str(data_dir))
  assert not data_dir.exists()
  data_dir.mkdir()
  with pytest.raises(RuntimeError, match="generation failed"):
    registry.get_builder("moving_shapes", str(data_dir))
  assert os.listdir(data_dir) == []


def test_the_script_refuses_a_name_outside_the_data_dir(tmp_path):
  (tmp_path / "videos").mkdir()
  cmd = [sys.executable, SCRIPT, f"--input_dir={tmp_path / 'videos'}", "--name=../../x",
         f"--data_dir={tmp_path / 'data' / 'tfds'}"]
  done = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert "make_video_dataset.py: dataset name '../../x' must be one plain folder name" in done.stderr
  assert "Traceback" not in done.stderr
  assert sorted(os.listdir(tmp_path)) == ["videos"]
