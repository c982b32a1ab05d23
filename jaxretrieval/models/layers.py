"""Layers with PyTorch semantics, so that reference checkpoints behave identically.

The reference is a PyTorch model: its Linear layers are initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in))
for weights *and* biases, and its BatchNorm1d updates the running variance with the unbiased batch
variance (REFERENCE §2.2, §7.9-10). Flax's defaults differ on both counts, hence these layers.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default Linear initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / max(||x||_2, 1e-12), as torch.nn.functional.normalize."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
  return (x / jnp.maximum(norm, 1e-12)).astype(x.dtype)


def mish(x: Array) -> Array:
  """Mish(x) = x * tanh(softplus(x))."""
  return x * jnp.tanh(jax.nn.softplus(x))


class Linear(nn.Module):
  """y = x W + b with PyTorch's default initialisation (kernel stored as [in, out])."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    kernel = self.param('kernel', torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param('bias', torch_uniform(fan_in), (self.features,))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


def _masked_moments(x: Array, mask: Array | None, axis_name: str | None):
  """Per-channel mean, biased variance and row count over all leading axes of x.

  `mask` has x's leading shape; rows where it is 0 are left out. With `axis_name`, the moments are those of the
  rows of every device together (two passes, for accuracy).
  """
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)  # [rows, C]
  if mask is None:
    weights = jnp.ones((x.shape[0], 1), jnp.float32)
  else:
    weights = mask.reshape(-1, 1).astype(jnp.float32)  # [rows, 1]

  def total(v):
    return v if axis_name is None else jax.lax.psum(v, axis_name)

  count = total(jnp.sum(weights))
  mean = total(jnp.sum(weights * x, axis=0)) / count
  var = total(jnp.sum(weights * jnp.square(x - mean), axis=0)) / count
  return mean, var, count


class BatchNorm(nn.Module):
  """BatchNorm1d over the last axis with PyTorch semantics.

  Training normalises with the biased batch variance and moves the running statistics by
  `momentum` (PyTorch convention: running <- (1 - momentum) running + momentum batch), the
  running variance taking the unbiased batch variance. `mask` (broadcastable to
  x.shape[:-1]) removes padding rows from the statistics; `axis_name` takes them over all
  devices of a pmap.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, mask: Array | None = None) -> Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    if train:
      if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape[:-1])
      mean, var, count = _masked_moments(x, mask, self.axis_name)
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * count / (count - 1.0)
        running_mean.value = (1.0 - m) * running_mean.value + m * mean
        running_var.value = (1.0 - m) * running_var.value + m * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    inv = scale * jax.lax.rsqrt(var + self.epsilon)
    y = (x.astype(jnp.float32) - mean) * inv + bias
    return y.astype(self.dtype)
