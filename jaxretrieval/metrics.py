"""Retrieval metrics of the reference (REFERENCE §5), counted on device in query chunks.

`sims` is `[N * K, N]`: row r is caption r % K of item r // K (item-major), column j item j.
`query_masks` `[N, K]` marks real captions. Ranks are 0-based and tie-averaged: a ground
truth tied exactly (float equality) with others gets the mean of their sorted positions.
A rank is a count of higher and of equal scores, so no sort is needed and the matrix can be
scored chunk by chunk (pools of 20k items and more).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Elements of the [queries, items] matrix scored at once (64 MB of float32).
_CHUNK_ELEMENTS = 1 << 24

ScoreRows = Callable[[jax.Array], jax.Array]  # query rows [C] -> similarities [C, N]


@functools.partial(jax.jit, static_argnums=2)
def _t2a_counts(sims: jax.Array, rows: jax.Array, k: int):
  """Per query row: the ground truth's score, #items scored higher, #scored equal, finite."""
  target = jnp.take_along_axis(sims, (rows // k)[:, None], axis=1)  # [C, 1]
  return (target[:, 0], jnp.sum(sims > target, axis=1), jnp.sum(sims == target, axis=1),
          jnp.all(jnp.isfinite(sims)))


@jax.jit
def _a2t_counts(sims: jax.Array, real: jax.Array, own: jax.Array):
  """Per item and own caption: #real captions of the chunk scored higher / equal."""
  s = sims.T[:, :, None]  # [N, C, 1]
  real = real[None, :, None]  # [1, C, 1]
  own = own[:, None, :]  # [N, 1, K]
  return jnp.sum((s > own) & real, axis=1), jnp.sum((s == own) & real, axis=1)  # [N, K]


def retrieval_ranks(score_rows: ScoreRows, num_items: int,
                    query_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tie-averaged 0-based ranks: t2a for every real caption, a2t (best own caption) per item.

  `score_rows(rows)` gives the similarities `[C, N]` of the query rows `rows` `[C]` (valid
  indices; the last chunk repeats the final row). It is called twice per chunk with the same
  rows, first for the ground-truth scores and t2a ranks, then for the a2t counts, so the
  `[Q, N]` matrix never needs to exist at once; it must return the same values both times.
  """
  n, k = query_masks.shape
  q = n * k
  real = np.asarray(query_masks).reshape(-1) > 0  # [Q]
  rounds = -(-q * num_items // _CHUNK_ELEMENTS)
  chunk = -(-q // (rounds * 8)) * 8
  starts = range(0, q, chunk)
  index = [np.minimum(np.arange(s, s + chunk), q - 1) for s in starts]
  rows = [jnp.asarray(i) for i in index]
  t2a = [_t2a_counts(score_rows(r), r, k) for r in rows]
  if not all(bool(c[3]) for c in t2a):
    raise ValueError('similarity matrix holds NaN or Inf: an item without any available '
                     'expert, or a diverged model')
  target, below, equal = (np.concatenate([np.asarray(c[j]) for c in t2a])[:q] for j in range(3))
  t2a_ranks = below + (equal - 1) / 2.0
  own = jnp.asarray(target.reshape(n, k))
  a2t_below, a2t_equal = np.zeros((n, k), np.int64), np.zeros((n, k), np.int64)
  for s, i, r in zip(starts, index, rows):
    valid = jnp.asarray(real[i] & (np.arange(s, s + chunk) < q))
    b, e = _a2t_counts(score_rows(r), valid, own)
    a2t_below += np.asarray(b)
    a2t_equal += np.asarray(e)
  a2t_ranks = np.where(real.reshape(n, k), a2t_below + (a2t_equal - 1) / 2.0, np.inf)
  return t2a_ranks[real], a2t_ranks.min(axis=1)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
  """R@1/5/10/50 (percent), median and mean rank (1-based), geometric mean of R@1, R@5, R@10.

  As in the reference, R@1 counts ranks equal to 0, so a ground truth tied with another
  item (rank 0.5) is not a hit, while R@5 and above count ranks below k.
  """
  ranks = np.asarray(ranks, np.float64)
  n = ranks.size
  out = {'R1': 100.0 * float(np.count_nonzero(ranks == 0)) / n}
  out.update({f'R{k}': 100.0 * float(np.count_nonzero(ranks < k)) / n for k in (5, 10, 50)})
  out['MedR'] = float(np.median(ranks)) + 1.0
  out['MeanR'] = float(np.mean(ranks)) + 1.0
  r = np.array([out['R1'], out['R5'], out['R10']])
  out['geometric_mean_R1-R5-R10'] = float(np.exp(np.mean(np.log(r)))) if np.all(r > 0) else 0.0
  out['num_queries'] = n
  return out


def retrieval_metrics(sims: np.ndarray, query_masks: np.ndarray) -> dict[str, dict[str, float]]:
  """Text-to-audio and audio-to-text metrics of an evaluation similarity matrix `[N * K, N]`."""
  query_masks = np.asarray(query_masks)
  n, k = query_masks.shape
  if np.shape(sims) != (n * k, n):
    raise ValueError(f'similarity matrix of shape {np.shape(sims)} does not fit query masks '
                     f'{query_masks.shape}: expected ({n * k}, {n})')
  sims = jnp.asarray(sims, jnp.float32)
  return metrics_from_scores(lambda rows: sims[rows], n, query_masks)


def metrics_from_scores(score_rows: ScoreRows, num_items: int,
                        query_masks: np.ndarray) -> dict[str, dict[str, float]]:
  """Metrics from query-chunk similarities (see `retrieval_ranks`)."""
  t2a, a2t = retrieval_ranks(score_rows, num_items, query_masks)
  return {'t2a': metrics_from_ranks(t2a), 'a2t': metrics_from_ranks(a2t)}
