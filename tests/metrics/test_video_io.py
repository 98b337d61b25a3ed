"""Video files and grids: round trips through real encoders and decoders, grid geometry."""

import os

import numpy as np
import pytest

from vdm_jax.metrics import video_io


def _smooth_video(t=9, h=16, w=20, c=3, seed=0):
  """A moving gradient (compresses well, so H.264 round trips are close)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  frames = []
  for i in range(t):
    chans = [np.sin(2 * np.pi * (xx + yy * k + i / t + rng.uniform())) for k in range(c)]
    frames.append(np.stack(chans, -1))
  return video_io.to_uint8(np.stack(frames).astype(np.float32) * 0.9)


def test_to_uint8_maps_range_and_clips():
  x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0], np.float32)
  np.testing.assert_array_equal(video_io.to_uint8(x), [0, 0, 128, 255, 255])
  u = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(video_io.to_uint8(video_io.to_float(u)), u)
  with pytest.raises(ValueError, match="dtype"):
    video_io.to_uint8(np.arange(3))


def test_mp4_round_trip_upscaled(tmp_path):
  video = _smooth_video(t=9, h=16, w=20)
  path = video_io.write_mp4(str(tmp_path / "a" / "v.mp4"), video, fps=8)
  back = video_io.read_video(path)
  # Short side 16 -> nearest upscale by 8 to reach 128.
  assert back.shape == (9, 128, 160, 3)
  assert back.dtype == np.uint8
  err = np.abs(back[:, 3::8, 3::8].astype(np.float32) - video).mean()
  assert err < 4.0, err
  assert video_io.read_video(path, max_frames=4).shape[0] == 4


def test_mp4_odd_size_padded_to_even_and_gray(tmp_path):
  video = _smooth_video(t=5, h=15, w=13, c=1)
  back = video_io.read_video(video_io.write_mp4(str(tmp_path / "g.mp4"), video, min_size=0))
  assert back.shape == (5, 16, 14, 3)
  err = np.abs(back[:, :15, :13].astype(np.float32) - video).mean()
  assert err < 4.0, err


def test_gif_round_trip_keeps_every_frame(tmp_path):
  gray = np.random.default_rng(1).integers(0, 256, (5, 8, 10, 1), dtype=np.uint8)
  gray[2] = gray[1]  # identical consecutive frames must not be merged
  back = video_io.read_video(video_io.write_gif(str(tmp_path / "g.gif"), gray, fps=8))
  assert back.shape == (5, 8, 10, 3)
  np.testing.assert_array_equal(back[..., 0], gray[..., 0])

  rgb = np.zeros((6, 16, 20, 3), np.uint8)
  rgb[:, 4:10, 5:12] = (200, 30, 90)
  rgb[3:] = np.roll(rgb[3:], 3, axis=2)
  back = video_io.read_video(video_io.write_gif(str(tmp_path / "c.gif"), rgb, fps=8, scale=2))
  assert back.shape == (6, 32, 40, 3)
  np.testing.assert_array_equal(back[:, ::2, ::2], rgb)


def test_video_grid_geometry():
  videos = np.stack([np.full((3, 4, 5, 3), i * 10, np.uint8) for i in range(5)])
  grid = video_io.video_grid(videos, pad=1)  # ncols = ceil(sqrt(5)) = 3, 2 rows
  assert grid.shape == (3, 2 * 5 + 1, 3 * 6 + 1, 3)
  np.testing.assert_array_equal(grid[:, 1:5, 1:6], videos[0])
  np.testing.assert_array_equal(grid[:, 6:10, 7:12], videos[4])  # row 1, col 1
  assert (grid[:, 6:10, 13:18] == 255).all()  # the empty sixth tile stays padding
  assert video_io.video_grid(videos, ncols=5, pad=0).shape == (3, 4, 25, 3)


def test_frames_strip_grid_rows_are_videos():
  videos = np.random.default_rng(0).integers(0, 256, (2, 4, 3, 5, 1), dtype=np.uint8)
  strip = video_io.frames_strip_grid(videos, pad=1)
  assert strip.shape == (2 * 4 + 1, 4 * 6 + 1, 1)
  for n in range(2):
    for t in range(4):
      y, x = 1 + n * 4, 1 + t * 6
      np.testing.assert_array_equal(strip[y:y + 3, x:x + 5], videos[n, t])


def test_save_videos_writes_everything(tmp_path):
  videos = video_io.to_float(np.stack([_smooth_video(t=4, h=8, w=8, seed=s) for s in range(3)]))
  written = video_io.save_videos(str(tmp_path), videos, prefix="s", fps=4)
  assert len(written["mp4"]) == 3 and len(written["gif"]) == 3
  for key in ("grid_mp4", "grid_gif", "strip_png", "npz"):
    assert os.path.isfile(written[key]), key
  stored = np.load(written["npz"])["videos"]
  assert stored.dtype == np.uint8 and stored.shape == (3, 4, 8, 8, 3)
  np.testing.assert_array_equal(stored, video_io.to_uint8(videos))
  assert video_io.list_video_files(str(tmp_path)) == sorted(written["gif"] + written["mp4"])
  with pytest.raises(ValueError, match="formats"):
    video_io.save_videos(str(tmp_path), videos, formats=("webp",))


def test_bad_inputs_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r"\[T, H, W, C\]"):
    video_io.write_gif(str(tmp_path / "x.gif"), np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(FileNotFoundError):
    video_io.read_video(str(tmp_path / "missing.mp4"))


def test_to_float_is_the_data_formula_and_to_uint8_inverts_it_exactly():
  u = np.arange(256, dtype=np.uint8)
  f = video_io.to_float(u)
  assert f.dtype == np.float32
  # The data pipeline's formula, which training data must keep bit for bit.
  np.testing.assert_array_equal(f, u.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0))
  assert f[0] == -1.0 and f[-1] == 1.0
  np.testing.assert_array_equal(video_io.to_uint8(f), u)
  floats = np.linspace(-1, 1, 7, dtype=np.float64)
  assert video_io.to_float(floats).dtype == np.float32  # float passes through as float32


def test_to_float_on_device_matches_host():
  jnp = pytest.importorskip("jax.numpy")
  import jax  # pylint: disable=g-import-not-at-top

  u = np.arange(256, dtype=np.uint8).reshape(16, 16)
  on_device = jax.jit(lambda x: video_io.to_float(x, xp=jnp))(u)
  assert on_device.dtype == jnp.float32
  # XLA may fuse the multiply-subtract (one rounding instead of two): within an ulp of the host.
  np.testing.assert_allclose(np.asarray(on_device), video_io.to_float(u), rtol=0, atol=2.4e-7)


def test_iter_frames_yields_rgb_frames_and_times(tmp_path):
  video = _smooth_video(t=4, h=8, w=8)
  path = video_io.write_mp4(str(tmp_path / "v.mp4"), video, fps=4, min_size=0)
  frames = list(video_io.iter_frames(path))
  assert len(frames) == 4
  assert all(f.shape == (8, 8, 3) and f.dtype == np.uint8 for f, _ in frames)
  np.testing.assert_allclose([t for _, t in frames], [0.0, 0.25, 0.5, 0.75])


def test_unreadable_video_files_are_one_line_errors(tmp_path):
  text = tmp_path / "x.mp4"
  text.write_text("this is not a video\n")
  with pytest.raises(ValueError, match="not a readable video") as info:
    video_io.read_video(str(text))
  message = str(info.value)
  assert "x.mp4" in message and "\n" not in message and "Errno" not in message
  assert info.value.__cause__ is None and info.value.__suppress_context__
  with pytest.raises(FileNotFoundError, match="missing.mp4"):
    list(video_io.iter_frames(str(tmp_path / "missing.mp4")))
