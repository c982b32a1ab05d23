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
  return side_scores(query_side(text, weights, names), weights,
                     item_side(audio, availability, names), availability)


def side_scores(queries: Array, weights: Array, items: Array, availability: Array) -> Array:
  """`mixture_similarity` from its two sides (`query_side`, `item_side`): one matmul,
  sum_i (w_i T_i) . (a_i E_i) == sum_i w_i a_i cos_i, over the weights of the experts each
  item has."""
  return (queries @ items.T) / (weights.astype(jnp.float32) @ availability.astype(jnp.float32).T)


def query_side(text: dict[str, Array], weights: Array, names: Sequence[str]) -> Array:
  """`[Q, sum d_e]`: each expert's query embedding scaled by the query's weight of it, side
  by side in the order `names` (the query side of the fused similarity)."""
  weights = weights.astype(jnp.float32)
  return jnp.concatenate([weights[:, i:i + 1] * text[e].astype(jnp.float32)
                          for i, e in enumerate(names)], axis=-1)


def item_side(audio: dict[str, Array], availability: Array, names: Sequence[str]) -> Array:
  """`[N, sum d_e]`: each item's expert embeddings side by side in the order `names`, zero
  for the experts it lacks (the item side of the fused similarity; what a search index
  stores). Then `S = query_side @ item_side.T / (weights @ availability.T)`."""
  avail = availability.astype(jnp.float32)
  return jnp.concatenate([avail[:, i:i + 1] * audio[e].astype(jnp.float32)
                          for i, e in enumerate(names)], axis=-1)
