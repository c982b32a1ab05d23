"""Collaborative Experts: the audio side of CE (REFERENCE §2.3 step 6)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxretrieval.models.gating import (
  GatedEmbeddingUnitReasoning,
  MimicGatedEmbeddingUnit,
  ReduceDim,
  RelationModule,
)
from jaxretrieval.models.layers import Array, Dtype


class CollaborativeGating(nn.Module):
  """CE-pairwise: each expert is gated by its pairwise relations to all experts.

  Every expert is first projected to `features` (ReduceDim). Then, sequentially in expert
  order, expert i gets the mask m_i = sum_j a_ij g([E_i, E_j]) / (sum_j a_ij + 1e-11), with
  a_ij the joint availability, and is replaced in place by GEUReasoning_i(E_i, m_i): experts
  processed later see the already gated versions of earlier ones, as in the reference (a
  checkpoint trained that way only matches this order). The relation MLP g is shared by all
  pairs; in training each of its M^2 calls updates its BatchNorm running statistics.
  """
  experts: Sequence[str]
  features: int = 768
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: dict[str, Array], availability: Array, train: bool,
               row_mask: Array | None = None) -> dict[str, Array]:
    emb = {e: ReduceDim(self.features, self.dtype, name=f'reduce_{e}')(pooled[e])
           for e in self.experts}  # each [B, features], unit norm
    relation = RelationModule(self.features, axis_name=self.axis_name, dtype=self.dtype,
                              name='relation')
    avail = availability.astype(jnp.float32)  # [B, M]
    for i, e in enumerate(self.experts):
      total, count = 0.0, 0.0
      for j, f in enumerate(self.experts):
        h = relation(jnp.concatenate([emb[e], emb[f]], axis=-1), train, row_mask)
        a = (avail[:, i] * avail[:, j])[:, None]  # [B, 1]
        total, count = total + a * h, count + a
      ce_mask = total / (count + 1e-11)  # [B, features]
      emb[e] = GatedEmbeddingUnitReasoning(self.axis_name, self.dtype, name=f'gate_{e}')(
          emb[e], ce_mask.astype(self.dtype), train, row_mask)
    return emb


class SingleExpertGating(nn.Module):
  """The paper's single-expert "CE" rows: L2(ContextGating(ReduceDim(x))), no relations.

  The reference calls this `mimic_ce_dims`: the dimensions of CE without its gating.
  """
  expert: str
  features: int = 768
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: dict[str, Array], availability: Array, train: bool,
               row_mask: Array | None = None) -> dict[str, Array]:
    del availability  # a single expert must be present for every item
    e = self.expert
    x = ReduceDim(self.features, self.dtype, name=f'reduce_{e}')(pooled[e])
    x = MimicGatedEmbeddingUnit(self.axis_name, self.dtype, name=f'gate_{e}')(x, train,
                                                                             row_mask)
    return {e: x}
