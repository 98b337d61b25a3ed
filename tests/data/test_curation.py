"""Curation of a folder of videos: cuts, motion, near duplicates, frame rate, the report.

Synthetic MP4s with known content: smooth random textures with distinct colour casts, panned by
whole pixels per frame (so the true motion is known), cut together at known frames.
"""

import numpy as np
import pytest
import scipy.ndimage

from vdm_jax.data import curation, registry, video_files
from vdm_jax.data.builders import video_folder
from vdm_jax.metrics import video_io

RES, CLIP = 32, 8
RED, GREEN, BLUE, YELLOW = (1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.3, 1.0), (1.0, 1.0, 0.2)


def _pan(seed: int, tint, num_frames: int, speed: int) -> np.ndarray:
  """uint8 [num_frames, RES, RES, 3]: a RES-wide window sliding right over a texture, speed px/frame."""
  rng = np.random.default_rng(seed)
  tex = scipy.ndimage.gaussian_filter(rng.normal(size=(RES, 4 * RES)), 2.0, mode="wrap")
  tex = (tex - tex.min()) / (tex.max() - tex.min())
  rgb = np.clip(tex[..., None] * np.asarray(tint) * 255, 0, 255).astype(np.uint8)
  return np.stack([np.roll(rgb, -i * speed, axis=1)[:, :RES] for i in range(num_frames)])


def _write(path, frames, fps=8, crf=12):
  return video_io.write_mp4(str(path), frames, fps=fps, min_size=0, crf=crf)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """cuts.mp4: 3 shots of 16 frames (cuts at 16 and 32); static.mp4: a still shot; dup.mp4:
  cuts.mp4's second shot noised and re-encoded; broken.mp4: not a video."""
  root = tmp_path_factory.mktemp("videos")
  shots = [_pan(0, RED, 16, 1), _pan(1, GREEN, 16, 1), _pan(2, BLUE, 16, 2)]
  _write(root / "cuts.mp4", np.concatenate(shots))
  _write(root / "static.mp4", _pan(3, YELLOW, 16, 0))
  noise = np.random.default_rng(9).normal(0, 4, shots[1].shape)
  _write(root / "dup.mp4", np.clip(shots[1] + noise, 0, 255).astype(np.uint8), crf=30)
  (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
  return root


def test_cut_detector_finds_the_known_cuts_and_nothing_in_a_pan(folder):
  frames = video_files.decode_timed(str(folder / "cuts.mp4"), RES).frames
  assert curation.detect_cuts(frames) == [16, 32]
  # At 8 fps from 24: cuts are found among all frames, then moved to the first kept frame after.
  fast = video_files.decode_timed(_write(folder.parent / "fast.mp4", np.repeat(frames, 3, axis=0), fps=24),
                                  RES, fps=8, histograms=True)
  assert fast.source_index.tolist() == list(range(0, 144, 3))
  assert fast.cuts(curation.CUT_THRESHOLD) == [16, 32]
  assert curation.map_cuts([30, 76, 300], np.arange(0, 250, 3)) == [10, 26]
  pan = video_io.read_video(_write(folder.parent / "pan.mp4", _pan(4, GREEN, 40, 3)))
  assert curation.detect_cuts(pan) == []
  assert curation.split_at(48, [16, 32]) == [(0, 16), (16, 32), (32, 48)]


def test_motion_score_ranks_known_speeds_and_zero_for_a_still_shot(tmp_path):
  clips = [video_io.read_video(_write(tmp_path / f"{s}.mp4", _pan(5, RED, 8, s))) for s in (0, 1, 2, 3)]
  per_frame = [curation.motion_score(c) for c in clips]
  assert per_frame[0] < per_frame[1] < per_frame[2] < per_frame[3]
  # Pixels per frame at 64 x 64 (a pan of 1 px at 32 moves 2 px there; the proxy reads ~0.6 of it).
  assert 1.0 < per_frame[1] < 2.5
  per_second = [curation.motion_score(c, fps=8.0) for c in clips]
  assert per_second == pytest.approx([8 * s for s in per_frame], rel=1e-6)
  assert per_second[0] < curation.CurationConfig().min_motion < per_second[1]


def test_phash_flags_a_noised_reencoded_copy_but_not_another_clip(folder):
  orig = video_files.decode_timed(str(folder / "cuts.mp4"), RES).frames
  copy = video_files.decode_timed(str(folder / "dup.mp4"), RES).frames
  h_orig = curation.key_frame_hashes(orig[16:24])
  near = curation.hamming(h_orig, curation.key_frame_hashes(copy[:8])).mean()
  other = curation.hamming(h_orig, curation.key_frame_hashes(orig[32:40])).mean()
  max_bits = curation.CurationConfig().dedup_max_bits
  assert near <= max_bits < other
  dedup = curation.Deduplicator(max_bits)
  dedup.add(h_orig, "cuts:1", "cuts:1:0")
  assert dedup.find(curation.key_frame_hashes(orig[24:32]), "cuts:1") is None  # same shot
  assert dedup.find(curation.key_frame_hashes(copy[:8]), "dup:0")[0] == "cuts:1:0"


def test_frame_rate_normalisation_selects_frames_by_time(tmp_path):
  frames = _pan(6, BLUE, 24, 1)
  _write(tmp_path / "fast.mp4", frames, fps=24)
  decoded = video_files.decode_timed(str(tmp_path / "fast.mp4"), RES, fps=8)
  kept, times = decoded.frames, decoded.times
  assert len(kept) == 8 and curation.clip_fps(times) == pytest.approx(8.0)
  assert np.abs(kept.astype(int) - frames[::3]).mean() < 8  # frames 0, 3, 6, ...
  _write(tmp_path / "slow.mp4", frames[:8], fps=8)
  decoded = video_files.decode_timed(str(tmp_path / "slow.mp4"), RES, fps=24)
  kept, times = decoded.frames, decoded.times
  assert len(kept) == 8 and curation.clip_fps(times) == pytest.approx(8.0)  # never repeated


def test_curated_folder_gives_the_expected_clips_and_report(folder, tmp_path):
  cfg = curation.CurationConfig(split_at_cuts=True, drop_static=True, dedup=True)
  report = video_folder.make_folder_dataset(str(folder), "cur", str(tmp_path), num_frames=CLIP,
                                            resolution=RES, curation_config=cfg)
  totals = {k: v for k, v in report.items() if k.startswith("num_")}
  assert totals == {
      "num_found": 4, "num_read": 3, "num_skipped": 1, "num_cuts": 2, "num_shots": 5,
      "num_candidates": 10, "num_clips": 6, "num_unused_frames": 0,
      "num_dropped": {"too_short": 0, "static": 2, "duplicate": 2, "over_cap": 0}}
  assert [p.rsplit("/", 1)[1] for p in report["skipped"]] == ["broken.mp4"]
  assert report["skipped"][str(folder / "broken.mp4")].startswith("unreadable")
  why = {d["clip"].rsplit("/", 1)[1]: d["reason"] for d in report["dropped"]}
  assert why == {"static.mp4:0:0": "static", "static.mp4:0:1": "static",
                 "dup.mp4:0:0": "duplicate", "dup.mp4:0:1": "duplicate"}
  assert report["clips"] == {str(folder / "cuts.mp4"): 6, str(folder / "dup.mp4"): 0,
                             str(folder / "static.mp4"): 0}
  source = registry.open_source("folder/cur", "train", str(tmp_path))
  examples = [source[i] for i in range(len(source))]
  assert len(examples) == 6 and all(e["video"].shape == (CLIP, RES, RES, 3) for e in examples)
  assert all(e["fps"] == pytest.approx(8.0) and e["motion"] > cfg.min_motion for e in examples)


def test_without_curation_every_clip_is_kept_and_a_short_shot_is_reported(folder):
  files = video_files.find_videos(str(folder))
  out, report = video_files.decode_folder(files, CLIP, RES)
  assert report.as_dict()["num_clips"] == 6 + 2 + 2 and not report.dropped
  cfg = curation.CurationConfig(split_at_cuts=True)
  _, report = video_files.decode_folder(files, 12, RES, curation_config=cfg)
  summary = report.as_dict()
  # 48 frames in 3 shots of 16 give 3 clips of 12 (not 4), and 4 frames of each shot unused.
  assert summary["clips"][str(folder / "cuts.mp4")] == 3 and summary["num_unused_frames"] == 3 * 4 + 2 * 4
  with pytest.raises(ValueError, match="that curation kept"):
    video_files.decode_folder(files[:1] + files[3:], CLIP, RES, curation_config=curation.CurationConfig(
        drop_static=True, min_motion=100.0))


def test_a_shot_too_short_for_a_clip_is_reported_not_lost():
  frames = np.concatenate([_pan(0, RED, 16, 1), _pan(1, GREEN, 4, 1), _pan(2, BLUE, 16, 1)])
  report = video_files.DecodeReport()
  decoded = video_files.Decoded(frames, np.arange(36) / 8.0, np.arange(36))
  kept = video_files.curate_video("v.mp4", decoded, CLIP,
                                  curation.CurationConfig(split_at_cuts=True),
                                  curation.Deduplicator(10.0), report)
  assert [c.key for c in kept] == ["v.mp4:0:0", "v.mp4:0:1", "v.mp4:2:0", "v.mp4:2:1"]
  assert report.dropped == [{"clip": "v.mp4:1", "reason": "too_short",
                             "detail": "a shot of 4 frames, clips need 8"}]
  assert all(c.fps == pytest.approx(8.0) for c in kept)

