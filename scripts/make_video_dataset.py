r"""Turns a folder of video files into a TFDS dataset for vdm_jax.

  python scripts/make_video_dataset.py --input_dir=~/my_videos --name=mine \
      --num_frames=16 --resolution=64 --frame_stride=2 --test_fraction=0.1

Videos (mp4, avi, webm, gif, mov, mkv) directly in input_dir are unlabelled;
videos in subfolders are labelled by the subfolder name. Unreadable files are
skipped and listed in the report (printed, and saved as report.json beside the
data). Train with DataConfig(name="folder/mine", data_dir=<same data_dir>).

Curation (off by default; --curate turns on all three): --split_at_cuts (no clip
spans a shot cut), --drop_static (clips whose motion score is under --min_motion),
--dedup (near duplicates of a clip kept before, by perceptual hash). Every dropped
shot or clip is printed with its reason; each clip's fps and motion score are
stored in the dataset ('fps', 'motion').
"""

import json
import os
import sys

from absl import app, flags

# Runnable as `python scripts/make_video_dataset.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vdm_jax.data import DataConfig, curation  # noqa: E402
from vdm_jax.data.builders import video_folder  # noqa: E402
from vdm_jax.runtime import setup_runtime  # noqa: E402

_INPUT = flags.DEFINE_string("input_dir", None, "Folder of video files.",
                             required=True)
_NAME = flags.DEFINE_string("name", None, "Dataset name (folder/<name>).",
                            required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir; default $VDM_DATA_DIR or "
    "~/tensorflow_datasets.")
_FRAMES = flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
_RES = flags.DEFINE_integer("resolution", 64, "Output height and width.")
_STRIDE = flags.DEFINE_integer("frame_stride", 1, "Keep every n-th frame.")
_FPS = flags.DEFINE_float("fps", None, "Resample to this frame rate instead (the first frame at or "
                          "after each 1/fps tick; a slower source keeps its own rate, never repeats).")
_MAX_CLIPS = flags.DEFINE_integer("max_clips_per_video", None,
                                  "Cap on clips per video.")
_TEST = flags.DEFINE_float("test_fraction", 0.0,
                           "Fraction of videos held out as the test split.")
_DEFAULTS = curation.CurationConfig()
_ENCODING = flags.DEFINE_enum("frame_encoding", "zlib", ["zlib", "png", "jpeg"],
                              "How clips are stored: a zlib-compressed uint8 tensor (smallest decode "
                              "cost), or encoded PNG/JPEG frames (smaller on disk, decoded per frame).")
_CURATE = flags.DEFINE_bool("curate", False, "Turn on --split_at_cuts, --drop_static and --dedup.")
_SPLIT = flags.DEFINE_bool("split_at_cuts", False, "Split videos into shots at detected cuts.")
_CUT = flags.DEFINE_float("cut_threshold", _DEFAULTS.cut_threshold,
                          "Least colour-histogram distance (0..1) between two frames at a cut.")
_STATIC = flags.DEFINE_bool("drop_static", False, "Drop clips with a motion score under --min_motion.")
_MOTION = flags.DEFINE_float("min_motion", _DEFAULTS.min_motion,
                             "Static below this motion score (pixels per second at 64x64).")
_DEDUP = flags.DEFINE_bool("dedup", False, "Drop near duplicates of clips kept before them.")
_DEDUP_BITS = flags.DEFINE_float("dedup_max_bits", _DEFAULTS.dedup_max_bits,
                                 "Duplicate at or below this mean perceptual-hash distance (of 64 bits).")


def _curation_config() -> curation.CurationConfig:
  on = _CURATE.value
  return curation.CurationConfig(
      split_at_cuts=on or _SPLIT.value, cut_threshold=_CUT.value,
      drop_static=on or _STATIC.value, min_motion=_MOTION.value,
      dedup=on or _DEDUP.value, dedup_max_bits=_DEDUP_BITS.value)


def main(argv):
  del argv
  setup_runtime(allocator=False)
  data_dir = DataConfig(data_dir=_DATA_DIR.value).resolved_data_dir
  try:
    curation_config = _curation_config()
    report = video_folder.make_folder_dataset(
        os.path.expanduser(_INPUT.value), _NAME.value, data_dir, num_frames=_FRAMES.value,
        resolution=_RES.value, frame_stride=_STRIDE.value, fps=_FPS.value,
        max_clips_per_video=_MAX_CLIPS.value, test_fraction=_TEST.value,
        curation_config=curation_config, frame_encoding=_ENCODING.value)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"make_video_dataset.py: {e}") from e
  for d in report.get("dropped", []):
    print(f"dropped {d['clip']}: {d['reason']} ({d['detail']})")
  print(json.dumps({k: v for k, v in report.items() if k.startswith("num_") or k == "skipped"},
                   indent=1))
  print(f"Train on it: python train.py --config configs/default.py --workdir runs/{_NAME.value} "
        f"--config.data.name=folder/{_NAME.value} --config.data.data_dir={data_dir}")


if __name__ == "__main__":
  app.run(main)
