"""NetVLAD pooling with ghost clusters (REFERENCE §2.2)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxretrieval.models.layers import Array, BatchNorm, Dtype


class NetVLAD(nn.Module):
  """Pools a variable-length sequence `[B, N, D]` into a `[B, D * clusters]` vector.

  Soft-assignment logits `x @ clusters` go through BatchNorm and a softmax over
  `clusters + ghost_clusters` columns; the ghost columns are then dropped without
  renormalising. Residuals are intra-normalised over D per cluster, flattened D-major
  (index `d * clusters + k`) and L2-normalised.

  The reference ignores the token mask: padding rows take part in the BatchNorm statistics
  and the sums (`use_mask=False`, the paper setting). With `use_mask=True`, tokens at or
  beyond `lengths` are left out of both.
  """
  clusters: int
  ghost_clusters: int = 0
  use_mask: bool = False
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, row_mask: Array | None = None,
               lengths: Array | None = None) -> Array:
    batch, tokens, dim = x.shape
    init = nn.initializers.normal(stddev=dim ** -0.5)
    centres = self.param('clusters', init, (dim, self.clusters + self.ghost_clusters))
    centres2 = self.param('clusters2', init, (1, dim, self.clusters))
    x = x.astype(self.dtype)

    token_mask = None  # [B, N]
    if self.use_mask:
      if lengths is None:
        raise ValueError('NetVLAD(use_mask=True) needs the token lengths.')
      token_mask = (jnp.arange(tokens)[None, :] < lengths[:, None]).astype(jnp.float32)
    bn_mask = token_mask
    if row_mask is not None:
      rows = jnp.broadcast_to(row_mask[:, None].astype(jnp.float32), (batch, tokens))
      bn_mask = rows if bn_mask is None else bn_mask * rows

    logits = jnp.einsum('bnd,dk->bnk', x, centres.astype(self.dtype))  # [B, N, K+G]
    logits = BatchNorm(axis_name=self.axis_name, dtype=jnp.float32, name='batch_norm')(
        logits, train, mask=bn_mask)
    assign = jax.nn.softmax(logits, axis=-1)[..., :self.clusters]  # [B, N, K]
    if token_mask is not None:
      assign = assign * token_mask[..., None]
    assign_sum = jnp.sum(assign, axis=1)  # [B, K]
    vlad = _aggregate(assign.astype(self.dtype), x).astype(jnp.float32)  # [B, D, K]
    vlad = vlad - assign_sum[:, None, :] * centres2
    # Intra-normalisation over D, then the L2 norm of the whole vector, which follows from
    # the per-cluster norms (each cluster's block has norm min(|v_k| / 1e-12, 1) after the
    # first step), so the [B, D, K] tensor is read only twice.
    norms = jnp.sqrt(jnp.sum(jnp.square(vlad), axis=1))  # [B, K]
    scale = 1.0 / jnp.maximum(norms, 1e-12)
    total = jnp.sqrt(jnp.sum(jnp.square(norms * scale), axis=-1, keepdims=True))  # [B, 1]
    scale = scale / jnp.maximum(total, 1e-12)
    vlad = vlad * scale[:, None, :]
    return vlad.reshape(batch, dim * self.clusters).astype(self.dtype)  # D-major


def _aggregate(assign: Array, x: Array) -> Array:
  """sum_n assign[b, n, k] x[b, n, d] -> `[B, D, K]`.

  XLA's CPU backend runs this many-tiny-matmuls contraction as a batched dot up to 2-3x
  slower than a fused multiply-and-sum, but differentiates the fused form 20-30x slower
  than the dot (measured in benchmarks/RESULTS.md): on CPU the forward pass is fused and the
  gradients are dots; accelerators get the dot both ways.
  """
  if jax.default_backend() == 'cpu':
    return _fused_aggregate(assign, x)
  return jnp.einsum('bnk,bnd->bdk', assign, x)


@jax.custom_vjp
def _fused_aggregate(assign: Array, x: Array) -> Array:
  return jnp.sum(x[..., :, None] * assign[:, :, None, :], axis=1)  # [B, D, K]


def _fused_aggregate_fwd(assign: Array, x: Array):
  return _fused_aggregate(assign, x), (assign, x)


def _fused_aggregate_bwd(residuals, g: Array):
  assign, x = residuals  # g: [B, D, K]
  return (jnp.einsum('bdk,bnd->bnk', g, x).astype(assign.dtype),
          jnp.einsum('bdk,bnk->bnd', g, assign).astype(x.dtype))


_fused_aggregate.defvjp(_fused_aggregate_fwd, _fused_aggregate_bwd)
