"""Mixture of Embedded Experts: the audio side of MoEE (REFERENCE §2.3 step 6, §2.5)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxretrieval.models.gating import GatedEmbeddingUnit
from jaxretrieval.models.layers import Array, Dtype


class MixtureOfEmbeddedExperts(nn.Module):
  """One GatedEmbeddingUnit per expert, each to that expert's own `features[i]` width."""
  experts: Sequence[str]
  features: Sequence[int]
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: dict[str, Array], availability: Array, train: bool,
               row_mask: Array | None = None) -> dict[str, Array]:
    del availability  # missing experts are excluded by the similarity weights
    return {e: GatedEmbeddingUnit(d, self.axis_name, self.dtype, name=f'gate_{e}')(
        pooled[e], train, row_mask) for e, d in zip(self.experts, self.features)}
