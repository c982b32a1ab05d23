"""Retrieval metrics of the reference (REFERENCE §5), counted on device in query chunks.

`sims` is `[N * K, N]`: row r is caption r % K of item r // K (item-major), column j item j.
`query_masks` `[N, K]` marks real captions. Ranks are 0-based and tie-averaged: a ground
truth tied exactly (float equality) with others gets the mean of their sorted positions.
A rank is a count of higher and of equal scores, so no sort is needed and the matrix can be
scored chunk by chunk (pools of 20k items and more), each chunk once for both directions.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Elements of the [queries, items] matrix scored at once (64 MB of float32).
_CHUNK_ELEMENTS = 1 << 24
# Ground-truth scores given up front may differ from the matrix entries by rounding (a
# matmul's summation order depends on its shape); entries within this distance of one
# (relative above magnitude 1) are compared exactly after the pass.
_TOLERANCE = 1e-6
# Such near-ties fetched per chunk; more (a matrix full of ties) and a2t is counted again
# against the exact ground truths in a second pass.
_NEAR_TIES = 4096

ScoreRows = Callable[[jax.Array], jax.Array]  # query rows [C] -> similarities [C, N]


# The a2t comparisons are laid out `[C, N, K]` (chunk rows, items, own captions) and reduced
# over the leading axis: the chunk's `[C, N]` rows are read in order (a transposed `[N, C, K]`
# layout made XLA:CPU read them strided, several times slower at 5,000 items and more).


def _own_caption(rows: jax.Array, k: int, n: int) -> jax.Array:
  """`[C, N, K]`: True where chunk row c is item n's own caption k."""
  return (((rows // k)[:, None, None] == jnp.arange(n)[None, :, None])
          & ((rows % k)[:, None, None] == jnp.arange(k)[None, None, :]))


def _near(sims, rows, k, valid, low, high):
  """`[C, N, K]`: real rows of other captions scoring within [low, high] of an item's own."""
  s = sims[:, :, None]  # [C, N, 1]
  near = (s >= low[None]) & (s <= high[None]) & valid[:, None, None]
  return near & ~_own_caption(rows, k, sims.shape[1])


def _near_pairs(sims, rows, k, valid, low, high):
  """`[C, N]`: the (chunk row, item) pairs of `_near` (in any of the item's windows); the
  pairs, K times fewer than the triples, are what is fetched, the windows sorted out on the
  host."""
  return jnp.any(_near(sims, rows, k, valid, low, high), axis=2)


@functools.partial(jax.jit, static_argnums=2)
def _chunk_counts(sims: jax.Array, rows: jax.Array, k: int, valid: jax.Array, low: jax.Array,
                  high: jax.Array):
  """Both directions' counts of one chunk of query rows `[C, N]`.

  t2a, per row: its ground truth's score (exact: read from this chunk), #items scored higher,
  #scored equal. a2t, per item and own caption with approximate score in [low, high]: #real
  captions of the chunk scored above `high` (so above the exact own score), and the number
  of (caption, item) pairs within one of the item's windows, which need an exact comparison.
  Plus finiteness.
  """
  target = jnp.take_along_axis(sims, (rows // k)[:, None], axis=1)  # [C, 1]
  above = jnp.sum((sims[:, :, None] > high[None]) & valid[:, None, None], axis=0)  # [N, K]
  return (target[:, 0], jnp.sum(sims > target, axis=1), jnp.sum(sims == target, axis=1),
          above, jnp.sum(_near_pairs(sims, rows, k, valid, low, high)),
          jnp.all(jnp.isfinite(sims)))


@functools.partial(jax.jit, static_argnums=(2, 6))
def _near_entries(sims, rows, k, valid, low, high, size: int):
  """(item, chunk row) indices and scores of the chunk's near-tie pairs."""
  row, item = jnp.nonzero(_near_pairs(sims, rows, k, valid, low, high), size=size,
                          fill_value=0)
  return item, row, sims[row, item]


@jax.jit
def _a2t_counts(sims: jax.Array, real: jax.Array, own: jax.Array):
  """Per item and own caption: #real captions of the chunk scored higher / equal."""
  s = sims[:, :, None]  # [C, N, 1]
  real = real[:, None, None]  # [C, 1, 1]
  own = own[None]  # [1, N, K]
  return jnp.sum((s > own) & real, axis=0), jnp.sum((s == own) & real, axis=0)  # [N, K]


def retrieval_ranks(score_rows: ScoreRows, targets: np.ndarray, num_items: int,
                    query_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tie-averaged 0-based ranks: t2a for every real caption, a2t (best own caption) per item.

  `score_rows(rows)` gives the similarities `[C, N]` of the query rows `rows` `[C]` (valid
  indices; the last chunk repeats the final row); it is called once per chunk, so the
  `[Q, N]` matrix never needs to exist at once. `targets` `[Q]` are the ground-truth scores
  `S[r, r // K]` computed up front, equal to the matrix entries up to rounding: t2a reads
  the exact entries from each chunk, and a2t counts every caption against its item's own
  scores with them, comparing the few captions within a tolerance exactly once the pass
  has seen every exact entry. Should a ground truth differ by more, or near-ties abound, a2t
  is counted again against the exact entries, so the ranks are always those of the matrix.
  """
  n, k = query_masks.shape
  q = n * k
  real = np.asarray(query_masks).reshape(-1) > 0  # [Q]
  rounds = -(-q * num_items // _CHUNK_ELEMENTS)
  chunk = -(-q // (rounds * 8)) * 8
  starts = range(0, q, chunk)
  index = [np.minimum(np.arange(s, s + chunk), q - 1) for s in starts]
  # device_put, not jnp.asarray: outside a trace, that compiles a program per new shape.
  rows = [jax.device_put(i) for i in index]
  valid = [jax.device_put(real[i] & (np.arange(s, s + chunk) < q)) for s, i in zip(starts, index)]
  mask = real.reshape(n, k)
  approx = np.asarray(targets, np.float32).reshape(n, k)
  tolerance = _TOLERANCE * np.maximum(1.0, np.abs(approx))
  # Absent captions are no a2t candidates: their window is empty.
  low_host = np.where(mask, approx - tolerance, np.inf).astype(np.float32)
  high_host = np.where(mask, approx + tolerance, np.inf).astype(np.float32)
  low, high = jax.device_put(low_host), jax.device_put(high_host)
  counts, near = [], []
  for i, r, v in zip(index, rows, valid):
    sims = score_rows(r)
    counts.append(_chunk_counts(sims, r, k, v, low, high))
    found = int(counts[-1][4])
    if 0 < found <= _NEAR_TIES:
      near.append((found, i, _near_entries(sims, r, k, v, low, high, _NEAR_TIES)))
  if not all(bool(c[5]) for c in counts):
    raise ValueError('similarity matrix holds NaN or Inf: an item without any available '
                     'expert, or a diverged model')
  target, below, equal = (np.concatenate([np.asarray(c[j]) for c in counts])[:q]
                          for j in range(3))
  t2a_ranks = below + (equal - 1) / 2.0
  own = target.reshape(n, k)
  exact_enough = np.all((np.abs(own - approx) <= tolerance / 2)[mask])
  if exact_enough and all(int(c[4]) <= _NEAR_TIES for c in counts):
    a2t_below = sum(np.asarray(c[3], np.int64) for c in counts)
    a2t_equal = np.ones((n, k), np.int64)  # each own caption ties with itself
    for found, chunk_rows, entries in near:
      item, row, score = (np.asarray(e)[:found] for e in entries)
      # The windows each pair falls in, other than its own caption's (as `_near`).
      caption_row = item[:, None] * k + np.arange(k)[None, :]  # [F, K]
      inside = ((score[:, None] >= low_host[item]) & (score[:, None] <= high_host[item])
                & (chunk_rows[row][:, None] != caption_row))
      pair, caption = np.nonzero(inside)
      exact = own[item[pair], caption]
      np.add.at(a2t_below, (item[pair], caption), score[pair] > exact)
      np.add.at(a2t_equal, (item[pair], caption), score[pair] == exact)
  else:
    a2t_below, a2t_equal = _recount_a2t(score_rows, rows, valid, own)
  a2t_ranks = np.where(mask, a2t_below + (a2t_equal - 1) / 2.0, np.inf)
  return t2a_ranks[real], a2t_ranks.min(axis=1)


def _recount_a2t(score_rows: ScoreRows, rows, valid, own: np.ndarray):
  """a2t counts against the exact ground-truth scores: a second pass over the chunks."""
  own = jax.device_put(np.asarray(own))
  below, equal = 0, 0
  for r, v in zip(rows, valid):
    b, e = _a2t_counts(score_rows(r), v, own)
    below, equal = below + np.asarray(b, np.int64), equal + np.asarray(e, np.int64)
  return below, equal


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
  targets = np.asarray(sims, np.float32)[np.arange(n * k), np.arange(n * k) // k]
  sims = jax.device_put(np.asarray(sims, np.float32))
  return metrics_from_scores(lambda rows: sims[rows], targets, n, query_masks)


def metrics_from_scores(score_rows: ScoreRows, targets: np.ndarray, num_items: int,
                        query_masks: np.ndarray) -> dict[str, dict[str, float]]:
  """Metrics from query-chunk similarities and ground-truth scores (see `retrieval_ranks`)."""
  t2a, a2t = retrieval_ranks(score_rows, targets, num_items, query_masks)
  return {'t2a': metrics_from_ranks(t2a), 'a2t': metrics_from_ranks(a2t)}
