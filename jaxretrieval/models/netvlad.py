"""NetVLAD pooling with ghost clusters (REFERENCE §2.2)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxretrieval.models.layers import Array, BatchNorm, Dtype, l2_normalize


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
    vlad = jnp.einsum('bnk,bnd->bdk', assign.astype(self.dtype), x).astype(jnp.float32)
    vlad = vlad - assign_sum[:, None, :] * centres2  # [B, D, K]
    vlad = l2_normalize(vlad, axis=1)
    vlad = vlad.reshape(batch, dim * self.clusters)  # D-major
    return l2_normalize(vlad, axis=-1).astype(self.dtype)
