"""attention_impl: jax.nn.dot_product_attention (XLA here; cuDNN on GPU) against the einsum reference,
forward and gradients, with the T5 relative bias, the image-frame mask and chunked queries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax.model import ModelConfig
from vdm_jax.model import attention as attn

N, L, HEADS, D = 3, 8, 2, 16


def _qkv(dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  shape = (N, L, HEADS, D)
  return tuple(jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in (k1, k2, k3))


def _bias_and_mask():
  bias = jax.random.normal(jax.random.key(1), (1, HEADS, L, L), jnp.float32)  # like TemporalAttention
  image_mask = jnp.zeros((N, L), bool).at[0, -3:].set(True).at[2, 1].set(True)
  mask = attn.temporal_attention_mask(image_mask)[:, None]  # [N, 1, L, L]
  return bias, mask


def _loss(impl, **kw):
  return lambda q, k, v: jnp.sum(jnp.sin(attn.dot_product_attention(q, k, v, impl=impl, **kw)
                                         .astype(jnp.float32)))


@pytest.mark.parametrize("with_bias,with_mask", [(False, False), (True, False), (False, True),
                                                 (True, True)])
def test_xla_matches_reference_forward_and_grads(with_bias, with_mask):
  q, k, v = _qkv()
  bias, mask = _bias_and_mask()
  kw = dict(bias=bias if with_bias else None, mask=mask if with_mask else None)
  ref = jax.jit(lambda q, k, v: attn.dot_product_attention(q, k, v, impl="reference", **kw))(q, k, v)
  out = jax.jit(lambda q, k, v: attn.dot_product_attention(q, k, v, impl="xla", **kw))(q, k, v)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  g_ref = jax.jit(jax.grad(_loss("reference", **kw), argnums=(0, 1, 2)))(q, k, v)
  g_xla = jax.jit(jax.grad(_loss("xla", **kw), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_xla, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_masked_frames_attend_only_to_themselves():
  """An image frame's output is its own value, whichever implementation (the mask reaches the kernel)."""
  q, k, v = _qkv()
  _, mask = _bias_and_mask()
  out = attn.dot_product_attention(q, k, v, mask=mask, impl="xla")
  np.testing.assert_allclose(out[0, -3:], v[0, -3:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[2, 1], v[2, 1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[1, 0], v[1, 0], atol=1e-3)  # a video frame mixes frames


def test_bfloat16_close_to_float32_reference():
  q, k, v = _qkv(jnp.bfloat16)
  bias, mask = _bias_and_mask()
  ref = attn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), bias=bias, mask=mask)
  out = attn.dot_product_attention(q, k, v, bias=bias, mask=mask, impl="xla")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), ref, rtol=0.05, atol=0.05)
  g = jax.grad(_loss("xla", bias=bias, mask=mask))(q, k, v)
  g_ref = jax.grad(_loss("reference", bias=bias, mask=mask))(*(x.astype(jnp.float32) for x in (q, k, v)))
  np.testing.assert_allclose(g.astype(jnp.float32), g_ref, rtol=0.1, atol=0.1)


def test_chunked_queries_use_the_chosen_kernel():
  q, k, v = _qkv()
  ref = attn.dot_product_attention(q, k, v)
  out = attn.dot_product_attention(q, k, v, chunk_size=4, impl="xla")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  jaxpr = str(jax.make_jaxpr(lambda a, b, c: attn.dot_product_attention(a, b, c, chunk_size=4, impl="xla"))(
      q, k, v))
  assert "scan" in jaxpr  # still chunked (lax.map)


def test_auto_is_xla_off_gpu_and_config_rejects_unknown():
  assert jax.default_backend() == "cpu"
  assert attn.resolve_attention_impl("auto", jnp.bfloat16) == "xla"
  assert attn.resolve_attention_impl("cudnn", jnp.float32) == "cudnn"
  assert ModelConfig(attention_impl="auto").attention_impl == "auto"
  with pytest.raises(ValueError, match="attention_impl"):
    ModelConfig(attention_impl="flash")


def test_temporal_attention_module_same_output_under_both_impls():
  """The same parameters give the same output and gradient with 'reference' and 'xla' (T5 bias + mask)."""
  def build(impl):
    m = attn.TemporalAttention(16, 2, 4, rngs=nnx.Rngs(0), attention_impl=impl)
    m.rel_bias[...] = jax.random.normal(jax.random.key(2), m.rel_bias.shape)  # a bias that matters
    m.out.kernel[...] = jax.random.normal(jax.random.key(3), m.out.kernel.shape) * 0.1  # not zero-init
    return m

  x = jax.random.normal(jax.random.key(4), (2, 6, 2, 2, 16))
  image_mask = jnp.zeros((2, 6), bool).at[1, -2:].set(True)

  def run(impl):
    graphdef, params = nnx.split(build(impl))
    apply = lambda p, x: nnx.merge(graphdef, p)(x, image_mask)
    return jax.jit(apply)(params, x), jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2)))(params, x)

  outs, grads = zip(run("reference"), run("xla"))
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
