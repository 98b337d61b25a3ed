"""The one interface between the diffusion core and any network: a denoise function."""

from __future__ import annotations

from typing import Any, Protocol

import jax


class DenoiseFn(Protocol):
  """denoise_fn(z, logsnr, cond) -> the network's prediction (v, eps or x), float32.

  Args:
    z: noisy data [B, T, H, W, C].
    logsnr: per-example log-SNR [B].
    cond: the conditioning (vdm_jax.denoiser.Conditioning for the U-Net; any pytree the
      network takes, or None). The diffusion core passes it through, and classifier-free
      guidance concatenates it with its unconditional version leaf by leaf.

  Returns:
    [B, T, H, W, C], the same shape as z.
  """

  def __call__(self, z: jax.Array, logsnr: jax.Array, cond: Any) -> jax.Array:
    ...
