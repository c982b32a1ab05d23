"""Retrieval evaluation of a split (REFERENCE §5): its items and captions embedded
(`embedding`), every caption scored against every item with the mixture-weighted similarity
and ranked on device, in chunks of captions, each chunk once.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.embedding import Embedder, MMTEmbedder
from jaxretrieval.metrics import metrics_from_scores
from jaxretrieval.models import mmt
from jaxretrieval.models.similarity import item_side, query_side, side_scores


@jax.jit
def _similarity_rows(queries, weights, items, availability, rows):
  """Similarities `[C, N]` of the captions `rows` `[C]` against every item, from the two
  sides of the similarity (`query_side` `[Q, D]`, `item_side` `[N, D]`)."""
  return side_scores(queries[rows], weights[rows], items, availability)


@functools.partial(jax.jit, static_argnames='names')
def _sides(text, weights, audio, availability, names):
  return query_side(text, weights, names), item_side(audio, availability, names)


@functools.partial(jax.jit, static_argnames=('k', 'names'))
def _ground_truth_scores(text, weights, audio, availability, k: int, names):
  """S[r, r // k] for every caption row r: the mixture similarity of each caption with its
  own item, as a row-wise product (equal to the matrix entries up to rounding)."""
  own = lambda x: jnp.repeat(x, k, axis=0)
  avail = own(availability.astype(jnp.float32))  # [Q, M]
  w = weights.astype(jnp.float32) * avail
  dots = jnp.stack([jnp.sum(t.astype(jnp.float32) * own(audio[e]).astype(jnp.float32), axis=-1)
                    for e, t in ((e, text[e]) for e in names)], axis=-1)  # [Q, M]
  return jnp.sum(w * dots, axis=-1) / jnp.sum(w, axis=-1)


def split_metrics(text: dict, weights: np.ndarray, audio: dict, availability: np.ndarray,
                  query_masks: np.ndarray, names: tuple[str, ...]) -> dict:
  """t2a and a2t metrics of embedded captions (item-major, `[N * K, ...]`) and items `[N, ...]`,
  scored on device in query chunks, each chunk once; `names`: the experts in the order of
  the `weights` and `availability` columns."""
  names = tuple(names)
  text, weights, audio, availability = jax.device_put((text, weights, audio, availability))
  targets = _ground_truth_scores(text, weights, audio, availability, k=query_masks.shape[1],
                                 names=names)
  # Both sides are built once; each chunk of captions is then one matmul.
  queries, items = _sides(text, weights, audio, availability, names=names)
  return metrics_from_scores(
      lambda rows: _similarity_rows(queries, weights, items, availability, rows),
      np.asarray(targets), len(availability), query_masks)


def evaluate_split(embedder: Embedder, variables, data: SplitArrays, num_captions: int,
                   table) -> dict:
  """t2a and a2t metrics of a split with `num_captions` independent queries per item."""
  start = time.time()
  audio = embedder.items(variables, data)
  rows, masks = eval_queries(data, num_captions)
  text, weights = embedder.captions(variables, data, rows, table)
  metrics = split_metrics(text, weights, audio, data.availability, masks, embedder.names)
  metrics['seconds'] = time.time() - start
  metrics['num_items'] = len(data)
  return metrics


def eval_queries(data: SplitArrays, num_captions: int) -> tuple[np.ndarray, np.ndarray]:
  """Caption rows of the first `num_captions` captions of every item (item-major), and the
  query masks `[N, K]`; absent captions reuse the item's first caption, masked out."""
  k = np.arange(num_captions)[None, :]
  masks = k < data.caption_count[:, None]  # [N, K]
  rows = data.caption_start[:, None] + np.where(masks, k, 0)
  return rows.reshape(-1), masks.astype(np.float32)


def evaluate_mmt_split(embedder: MMTEmbedder, variables, data: SplitArrays,
                       num_captions: int, spec: mmt.MMTSpec) -> dict:
  """t2a and a2t metrics of a split for MMT (as `evaluation.evaluate_split`), a missing expert
  scored as `mmt.scored_availability` says."""
  start = time.time()
  audio = embedder.items(variables, data)
  rows, masks = eval_queries(data, num_captions)
  text, weights = embedder.captions(variables, data, rows)
  availability = np.asarray(mmt.scored_availability(spec, data.availability))
  metrics = split_metrics(text, weights, audio, availability, masks, spec.expert_names)
  metrics.update(seconds=time.time() - start, num_items=len(data),
                 distinct_queries=len(np.unique(data.caption_ids[rows], axis=0)))
  return metrics
