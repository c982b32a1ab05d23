"""Mixture-weighted cross-modal similarity (REFERENCE §2.3 step 7)."""

from collections.abc import Sequence

import jax.numpy as jnp

from jaxretrieval.models.layers import Array


def mixture_similarity(text: dict[str, Array], weights: Array, audio: dict[str, Array],
                       availability: Array, names: Sequence[str]) -> Array:
  """S[q, j] = sum_i W[q, j, i] <text_i[q], audio_i[j]>, W renormalised over present experts.

  Args:
    text: expert -> `[Q, d_e]` unit-norm query embeddings.
    weights: `[Q, M]` mixture weights (softmax over experts).
    audio: expert -> `[N, d_e]` unit-norm item embeddings.
    availability: `[N, M]` 1 where the item has the expert.
    names: the experts in the order of the `weights` and `availability` columns (the model's
      order, `spec.expert_names`). Not the dicts' key order: JAX rebuilds dicts that pass
      through its transformations (jit, pmap, all_gather) with sorted keys.

  Returns:
    `[Q, N]` similarities. An item with no available expert gives NaN (0/0), as in the
    reference; callers check availability first (see `check_availability`).
  """
  weights = weights.astype(jnp.float32)
  avail = availability.astype(jnp.float32)
  # One fused matmul: sum_i (w_i T_i) . (a_i E_i) == sum_i w_i a_i cos_i.
  lhs = jnp.concatenate([weights[:, i:i + 1] * text[e].astype(jnp.float32)
                         for i, e in enumerate(names)], axis=-1)  # [Q, sum d_e]
  rhs = jnp.concatenate([avail[:, i:i + 1] * audio[e].astype(jnp.float32)
                         for i, e in enumerate(names)], axis=-1)  # [N, sum d_e]
  return (lhs @ rhs.T) / (weights @ avail.T)
