"""The train state is created sharded: with fsdp=8, params, EMA and Adam moments all split ~1/8."""

import jax

from vdm_jax.config import OptimConfig
from vdm_jax.model import ModelConfig
from vdm_jax.parallel import make_mesh
from vdm_jax.train.optimizer import make_optimizer
from vdm_jax.train.state import create_train_state


def _fraction_on_first_device(tree) -> float:
  first = jax.devices()[0]
  on_first = sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
                 if s.device == first)
  return on_first / sum(x.nbytes for x in jax.tree.leaves(tree))


def test_fsdp_shards_params_ema_and_optimizer_state(devices):
  cfg = ModelConfig(base_channels=16, channel_mult=(1, 2), image_size=16, head_dim=16, norm_groups=8,
                   attention_resolutions=())
  tx = make_optimizer(OptimConfig(), 10)
  _, _, state = create_train_state(cfg, tx, make_mesh(data=1, fsdp=8), seed=0)
  fractions = {k: _fraction_on_first_device(state[k]) for k in ("params", "ema", "opt_state")}
  # Big kernels divide by 8; small vectors replicate, so each part holds a bit more than 1/8.
  for fraction in fractions.values():
    assert fraction < 0.2, fractions
  assert abs(fractions["opt_state"] - fractions["params"]) < 0.01, fractions
  assert state["step"].sharding.is_fully_replicated and state["rng"].sharding.is_fully_replicated
