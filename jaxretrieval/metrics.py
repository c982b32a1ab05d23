"""Retrieval metrics of the reference (REFERENCE §5), vectorised.

`sims` is `[N * K, N]`: row r is caption r % K of item r // K (item-major), column j item j.
`query_masks` `[N, K]` marks real captions. Ranks are 0-based and tie-averaged: a ground
truth tied exactly (float equality) with others gets the mean of their sorted positions.
"""

import numpy as np

# Rows of the [queries, items] matrix compared at once; bounds the temporary to ~64 MB.
_CHUNK_ELEMENTS = 1 << 24


def _tie_averaged_ranks(dists: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Rank of target[r, c] within dists[r], averaging over exact ties. dists `[R, C]`, target `[R, k]`."""
  ranks = np.empty(target.shape, np.float64)
  step = max(1, _CHUNK_ELEMENTS // max(1, dists.shape[1] * target.shape[1]))
  for start in range(0, dists.shape[0], step):
    d = dists[start:start + step, None, :]  # [r, 1, C]
    t = target[start:start + step, :, None]  # [r, k, 1]
    below = np.count_nonzero(d < t, axis=-1)
    equal = np.count_nonzero(d == t, axis=-1)
    ranks[start:start + step] = below + (equal - 1) / 2.0
  return ranks


def text_to_audio_ranks(sims: np.ndarray, query_masks: np.ndarray) -> np.ndarray:
  """Rank of the right item for every real caption (masked captions dropped)."""
  n, k = query_masks.shape
  dists = -np.asarray(sims, np.float32)  # [N*K, N]
  truth = np.repeat(np.arange(n), k)
  target = dists[np.arange(n * k), truth][:, None]
  ranks = _tie_averaged_ranks(dists, target)[:, 0]
  return ranks[np.asarray(query_masks).reshape(-1) > 0]


def audio_to_text_ranks(sims: np.ndarray, query_masks: np.ndarray) -> np.ndarray:
  """Per item, the best rank among its own captions; masked captions are pushed last."""
  n, k = query_masks.shape
  mask = np.asarray(query_masks).reshape(-1) > 0  # [N*K]
  dists = -np.asarray(sims, np.float32).T  # [N, N*K]
  dists = np.where(mask[None, :], dists, np.float32(1e8))
  own = dists[np.arange(n)[:, None], np.arange(n)[:, None] * k + np.arange(k)[None, :]]  # [N, K]
  ranks = _tie_averaged_ranks(dists, own)  # [N, K]
  ranks = np.where(mask.reshape(n, k), ranks, np.inf)
  return ranks.min(axis=1)


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
  """Text-to-audio and audio-to-text metrics of an evaluation similarity matrix."""
  sims = np.asarray(sims)
  query_masks = np.asarray(query_masks)
  n, k = query_masks.shape
  if sims.shape != (n * k, n):
    raise ValueError(f'similarity matrix of shape {sims.shape} does not fit query masks '
                     f'{query_masks.shape}: expected ({n * k}, {n})')
  if not np.all(np.isfinite(sims)):
    raise ValueError('similarity matrix holds NaN or Inf: an item without any available '
                     'expert, or a diverged model')
  return {'t2a': metrics_from_ranks(text_to_audio_ranks(sims, query_masks)),
          'a2t': metrics_from_ranks(audio_to_text_ranks(sims, query_masks))}
