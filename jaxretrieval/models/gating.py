"""Gated units of MoEE and Collaborative Experts (REFERENCE §2.2).

Every module takes `train` (batch statistics vs running statistics) and an optional
`row_mask` `[B]` that keeps padding rows of a partial batch out of the BatchNorm statistics.
Submodule names follow the reference's state_dict (`fc`, `cg`, `batch_norm`, `batch_norm2`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxretrieval.models.layers import Array, BatchNorm, Dtype, Linear, l2_normalize, mish


class ContextGating(nn.Module):
  """x * sigmoid(BN(fc(x))): a GLU whose gate is computed from its own input."""
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, row_mask: Array | None = None) -> Array:
    gate = Linear(x.shape[-1], dtype=self.dtype, name='fc')(x)
    gate = BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name='batch_norm')(
        gate, train, row_mask)
    return x * jax.nn.sigmoid(gate)


class GatedEmbeddingUnit(nn.Module):
  """L2(ContextGating(fc(x))): projects to `features` and gates (MoEE's GEU)."""
  features: int
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, row_mask: Array | None = None) -> Array:
    x = Linear(self.features, dtype=self.dtype, name='fc')(x)
    x = ContextGating(self.axis_name, self.dtype, name='cg')(x, train, row_mask)
    return l2_normalize(x)


class MimicGatedEmbeddingUnit(nn.Module):
  """L2(ContextGating(x)) without projection: the single-expert "CE" audio gate."""
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, row_mask: Array | None = None) -> Array:
    x = ContextGating(self.axis_name, self.dtype, name='cg')(x, train, row_mask)
    return l2_normalize(x)


class ReduceDim(nn.Module):
  """L2(fc(x)): projects an expert to the shared CE dimension."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return l2_normalize(Linear(self.features, dtype=self.dtype, name='fc')(x))


class ContextGatingReasoning(nn.Module):
  """x * sigmoid(BN(mask) + BN2(fc(x))): context gating conditioned on the CE mask."""
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, ce_mask: Array, train: bool,
               row_mask: Array | None = None) -> Array:
    bn = lambda name: BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=name)
    gate_x = bn('batch_norm2')(Linear(x.shape[-1], dtype=self.dtype, name='fc')(x), train,
                               row_mask)
    gate_mask = bn('batch_norm')(ce_mask, train, row_mask)
    return x * jax.nn.sigmoid(gate_mask + gate_x)


class GatedEmbeddingUnitReasoning(nn.Module):
  """L2(ContextGatingReasoning(x, mask)): the CE audio gate of one expert."""
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, ce_mask: Array, train: bool,
               row_mask: Array | None = None) -> Array:
    x = ContextGatingReasoning(self.axis_name, self.dtype, name='cg')(x, ce_mask, train,
                                                                      row_mask)
    return l2_normalize(x)


class RelationModule(nn.Module):
  """The CE relation MLP g: Linear(2d -> d), then 2 x [BN, Mish, Linear(d -> d)].

  Names: `fc_in` is the reference's `g_reason_1`; `bn_k`/`fc_k` are `g_reason_shared`'s
  BatchNorm and Linear of repetition k.
  """
  features: int
  layers: int = 2
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pair: Array, train: bool, row_mask: Array | None = None) -> Array:
    h = Linear(self.features, dtype=self.dtype, name='fc_in')(pair)  # [B, d]
    for k in range(self.layers):
      h = BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=f'bn_{k}')(
          h, train, row_mask)
      h = Linear(self.features, dtype=self.dtype, name=f'fc_{k}')(mish(h))
    return h
