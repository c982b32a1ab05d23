"""Losses: the reference's golden value and the block decomposition used across devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxretrieval.losses import (
  info_nce_loss,
  info_nce_terms,
  max_margin_ranking_loss,
  max_margin_terms,
)

GOLDEN_S = np.array([[0.9, 0.1, 0.8], [0.3, 0.5, 0.6], [0.2, 0.95, 0.4]], np.float32)


def _naive_max_margin(s, margin, fix_norm):
  n = len(s)
  terms = []
  for i in range(n):
    for j in range(n):
      if fix_norm and i == j:
        continue
      terms.append(max(0.0, margin - s[i, i] + s[i, j]))  # caption i vs item j
      terms.append(max(0.0, margin - s[j, j] + s[i, j]))  # item j vs caption i
  return np.mean(terms)


def test_max_margin_golden():
  assert float(max_margin_ranking_loss(jnp.asarray(GOLDEN_S), 0.2)) == pytest.approx(2.8 / 12,
                                                                                    abs=1e-7)


@pytest.mark.parametrize('fix_norm', [True, False])
def test_max_margin_matches_naive_sum(fix_norm):
  s = np.random.default_rng(0).uniform(-1, 1, (7, 7)).astype(np.float32)
  got = max_margin_ranking_loss(jnp.asarray(s), 0.3, fix_norm)
  np.testing.assert_allclose(got, _naive_max_margin(s.astype(np.float64), 0.3, fix_norm),
                             rtol=1e-6)


def test_invalid_rows_equal_the_smaller_batch():
  s = np.random.default_rng(1).uniform(-1, 1, (6, 6)).astype(np.float32)
  valid = np.array([1, 1, 0, 1, 1, 0], bool)
  kept = s[valid][:, valid]
  # Compiled (eagerly, every op would compile for each of the two shapes).
  max_margin, info_nce = jax.jit(max_margin_ranking_loss), jax.jit(info_nce_loss)
  np.testing.assert_allclose(max_margin(s, valid=valid), max_margin(kept), rtol=1e-6)
  np.testing.assert_allclose(info_nce(s, 10.0, valid), info_nce(kept, 10.0), rtol=1e-6)


@pytest.mark.parametrize('which', ['max_margin', 'infonce'])
def test_row_blocks_sum_to_the_full_loss(which):
  """Splitting captions and items over 3 'devices' gives the same total and gradient."""
  rng = np.random.default_rng(2)
  t = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  valid = jnp.asarray([1, 1, 1, 1, 1, 0], bool)
  terms = (lambda r, c, o: max_margin_terms(r, c, o, valid, 0.2)) if which == 'max_margin' else (
      lambda r, c, o: info_nce_terms(r, c, o, valid, 5.0))

  @jax.jit
  def full(t, a):
    s = t @ a.T
    total, count = terms(s, s, 0)
    return total / count

  @jax.jit
  def split(t, a):
    out = 0.0
    for k in range(3):
      rows = slice(2 * k, 2 * k + 2)
      total, count = terms(t[rows] @ a.T, t @ a[rows].T, 2 * k)
      out = out + total / count
    return out

  np.testing.assert_allclose(split(t, a), full(t, a), rtol=1e-6)
  for g1, g2 in zip(jax.jit(jax.grad(split, (0, 1)))(t, a), jax.jit(jax.grad(full, (0, 1)))(t, a)):
    np.testing.assert_allclose(g1, g2, atol=1e-6)


def test_info_nce_matches_cross_entropy():
  s = np.random.default_rng(3).uniform(-1, 1, (5, 5))
  scale = 7.0
  logits = scale * s
  t2a = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))
  a2t = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(0)))
  np.testing.assert_allclose(info_nce_loss(jnp.asarray(s, jnp.float32), scale), (t2a + a2t) / 2,
                             rtol=1e-5)
