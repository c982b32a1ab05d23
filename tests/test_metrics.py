"""Retrieval metrics: REFERENCE §5 golden example and a loop implementation of the protocol."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxretrieval import metrics
from jaxretrieval.metrics import metrics_from_ranks, retrieval_metrics

GOLDEN_S = np.array([[0.9, 0.1, 0.3], [0.2, 0.5, 0.5], [0.4, 0.4, 0.1], [0.7, 0.6, 0.0],
                     [0.1, 0.2, 0.3], [0, 0, 0]], np.float32)
GOLDEN_MASK = np.array([[1, 1], [1, 1], [1, 0]])


def _position_rank(row, value):
  """Mean sorted position of `value` among equal entries, as the reference computes it."""
  order = np.sort(row, kind='stable')
  return float(np.mean(np.flatnonzero(order == value)))


def _loop_t2a(sims, masks):
  n, k = masks.shape
  ranks = [_position_rank(-sims[r], -sims[r, r // k]) for r in range(n * k)]
  return np.array(ranks)[masks.reshape(-1) > 0]


def _loop_a2t(sims, masks):
  n, k = masks.shape
  d = -sims.T.copy()
  d[:, masks.reshape(-1) == 0] = 1e8
  return np.array([min(_position_rank(d[i], d[i, i * k + c]) for c in range(k) if masks[i, c])
                   for i in range(n)])


def _ranks(sims, masks, targets=None):
  n, k = masks.shape
  if targets is None:
    targets = sims[np.arange(n * k), np.arange(n * k) // k]
  sims = jnp.asarray(sims)
  return metrics.retrieval_ranks(lambda rows: sims[rows], targets, n, masks)


def test_golden_example():
  t2a, a2t = _ranks(GOLDEN_S, GOLDEN_MASK)
  np.testing.assert_array_equal(t2a, [0, 2, 0.5, 1, 0])
  np.testing.assert_array_equal(a2t, [0, 0, 1.5])
  m = retrieval_metrics(GOLDEN_S, GOLDEN_MASK)
  assert m['t2a']['R1'] == pytest.approx(40.0)
  assert m['t2a']['R5'] == pytest.approx(100.0)
  assert m['t2a']['MedR'] == pytest.approx(1.5)
  assert m['t2a']['MeanR'] == pytest.approx(1.7)
  assert m['t2a']['geometric_mean_R1-R5-R10'] == pytest.approx(73.6806, abs=1e-4)
  assert m['a2t']['R1'] == pytest.approx(66.6667, abs=1e-4)
  assert m['a2t']['MedR'] == pytest.approx(1.0)
  assert m['a2t']['MeanR'] == pytest.approx(1.5)
  assert m['a2t']['geometric_mean_R1-R5-R10'] == pytest.approx(87.3580, abs=1e-4)


@pytest.mark.parametrize('seed', [0, 1])
def test_vectorised_ranks_match_loop_with_ties_and_masks(seed):
  rng = np.random.default_rng(seed)
  n, k = 23, 3
  sims = np.round(rng.normal(size=(n * k, n)), 1).astype(np.float32)  # many exact ties
  masks = (rng.uniform(size=(n, k)) > 0.3).astype(int)
  masks[:, 0] = 1
  t2a, a2t = _ranks(sims, masks)
  np.testing.assert_array_equal(t2a, _loop_t2a(sims, masks))
  np.testing.assert_array_equal(a2t, _loop_a2t(sims, masks))


def test_chunked_ranks_equal_one_chunk(monkeypatch):
  rng = np.random.default_rng(2)
  n, k = 41, 5
  sims = np.round(rng.normal(size=(n * k, n)), 1).astype(np.float32)
  masks = (rng.uniform(size=(n, k)) > 0.2).astype(int)
  masks[:, 0] = 1
  whole = _ranks(sims, masks)
  monkeypatch.setattr(metrics, '_CHUNK_ELEMENTS', 7 * n)  # 26 chunks of 8 rows, the last one padded
  for a, b, loop in zip(whole, _ranks(sims, masks), (_loop_t2a, _loop_a2t)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, loop(sims, masks))


def test_metrics_from_ranks_counts_and_zero_geometric_mean():
  m = metrics_from_ranks(np.array([0, 0.5, 3, 7, 60]))
  assert (m['R1'], m['R5'], m['R10'], m['R50']) == (20.0, 60.0, 80.0, 80.0)
  assert metrics_from_ranks(np.array([2.0, 3.0]))['geometric_mean_R1-R5-R10'] == 0.0


def test_bad_inputs_are_reported():
  with pytest.raises(ValueError, match='does not fit'):
    retrieval_metrics(GOLDEN_S[:5], GOLDEN_MASK)
  bad = GOLDEN_S.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    retrieval_metrics(bad, GOLDEN_MASK)


def _tied_case(seed, n=23, k=3):
  rng = np.random.default_rng(seed)
  sims = np.round(rng.normal(size=(n * k, n)), 1).astype(np.float32)  # many exact ties
  masks = (rng.uniform(size=(n, k)) > 0.3).astype(int)
  masks[:, 0] = 1
  exact = sims[np.arange(n * k), np.arange(n * k) // k]
  return sims, masks, exact


@pytest.mark.parametrize('ulps', [-3, 0, 2])
def test_one_pass_with_rounded_ground_truths_is_exact(ulps, monkeypatch):
  """Up-front ground truths a few ulps off (as a row-wise product is from a matmul) give
  the matrix's exact ranks, near-ties compared exactly, each chunk scored once."""
  sims, masks, exact = _tied_case(3)
  rounded = exact + ulps * np.spacing(np.abs(exact))
  monkeypatch.setattr(metrics, '_CHUNK_ELEMENTS', 5 * masks.shape[0])  # several chunks
  calls = []
  table = jnp.asarray(sims)

  def score_rows(rows):
    calls.append(1)
    return table[rows]

  t2a, a2t = metrics.retrieval_ranks(score_rows, rounded, masks.shape[0], masks)
  chunks = -(-sims.shape[0] // 8)
  assert len(calls) == chunks  # one pass
  np.testing.assert_array_equal(t2a, _loop_t2a(sims, masks))
  np.testing.assert_array_equal(a2t, _loop_a2t(sims, masks))


@pytest.mark.parametrize('case', ['ground truth off', 'too many near-ties'])
def test_second_pass_keeps_ranks_exact(case, monkeypatch):
  sims, masks, exact = _tied_case(4)
  targets = exact
  if case == 'ground truth off':
    targets = exact + 0.05  # beyond the tolerance: a2t is counted again
  else:
    monkeypatch.setattr(metrics, '_NEAR_TIES', 1)
  t2a, a2t = _ranks(sims, masks, targets)
  np.testing.assert_array_equal(t2a, _loop_t2a(sims, masks))
  np.testing.assert_array_equal(a2t, _loop_a2t(sims, masks))
