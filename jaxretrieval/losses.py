"""Contrastive losses over a caption x item similarity matrix, positives on the diagonal.

Each loss is written as a sum of per-row terms over two blocks, so that a data-parallel
step can evaluate it over the global batch without building the whole matrix on every
device: device k holds `s_rows` (its captions against all items, `[b, n]`) and `s_cols`
(all captions against its items, `[n, b]`); `offset` is the global index of its first row.
Summing the returned `total` over devices and dividing by `count` gives the global loss.
On one device, `s_rows = S`, `s_cols = S`, `offset = 0`.
"""

import jax
import jax.numpy as jnp

from jaxretrieval.models.layers import Array

LOSSES = ('max_margin', 'infonce')


def _local_rows(s_rows: Array, offset, valid: Array):
  b, n = s_rows.shape
  rows = offset + jnp.arange(b)  # global index of each local row
  local_valid = valid[rows]
  pairs = local_valid[:, None] & valid[None, :]  # [b, n]
  is_positive = jnp.arange(n)[None, :] == rows[:, None]  # [b, n]
  return rows, local_valid, pairs, is_positive


def max_margin_terms(s_rows: Array, s_cols: Array, offset, valid: Array, margin: float,
                     fix_norm: bool = True) -> tuple[Array, Array]:
  """Hinge terms of the max-margin ranking loss (REFERENCE §4.1).

  For caption i and wrong item j: max(0, m - S[i,i] + S[i,j]); for item j and wrong caption
  i: max(0, m - S[j,j] + S[i,j]). `fix_norm` leaves out the 2n diagonal terms and averages
  over 2n(n-1); without it they count (each adds m) and the average is over 2n^2.

  Returns:
    (sum of this block's terms, number of terms in the global average).
  """
  s_rows, s_cols = s_rows.astype(jnp.float32), s_cols.astype(jnp.float32)
  rows, _, pairs, is_positive = _local_rows(s_rows, offset, valid)
  keep = pairs & ~is_positive if fix_norm else pairs
  b = s_rows.shape[0]
  caption_pos = s_rows[jnp.arange(b), rows]  # [b] S[i,i] of local captions
  item_pos = s_cols[rows, jnp.arange(b)]  # [b] S[j,j] of local items
  caption_terms = jax.nn.relu(margin - caption_pos[:, None] + s_rows)  # [b, n]
  item_terms = jax.nn.relu(margin - item_pos[:, None] + s_cols.T)  # [b, n]
  total = jnp.sum(jnp.where(keep, caption_terms + item_terms, 0.0))
  n = jnp.sum(valid.astype(jnp.float32))
  count = 2.0 * n * (n - 1.0) if fix_norm else 2.0 * n * n
  return total, count


def info_nce_terms(s_rows: Array, s_cols: Array, offset, valid: Array,
                   logit_scale: Array) -> tuple[Array, Array]:
  """Symmetric cross-entropy (text->audio and audio->text) at temperature 1/logit_scale.

  Returns:
    (sum of this block's per-query losses, 2 n: the number of queries in the global mean).
  """
  s_rows, s_cols = s_rows.astype(jnp.float32), s_cols.astype(jnp.float32)
  rows, local_valid, pairs, is_positive = _local_rows(s_rows, offset, valid)

  def cross_entropy(logits):  # [b, n], positives on `is_positive`
    logits = jnp.where(pairs, logit_scale * logits, -jnp.inf)
    positive = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=1)
    lse = jax.nn.logsumexp(jnp.where(local_valid[:, None], logits, 0.0), axis=1)
    return jnp.sum(jnp.where(local_valid, lse - positive, 0.0))

  total = cross_entropy(s_rows) + cross_entropy(s_cols.T)
  return total, 2.0 * jnp.sum(valid.astype(jnp.float32))


def max_margin_ranking_loss(sims: Array, margin: float = 0.2, fix_norm: bool = True,
                            valid: Array | None = None) -> Array:
  """The reference's MaxMarginRankingLoss on a square `[n, n]` matrix (one device)."""
  if valid is None:
    valid = jnp.ones(sims.shape[0], bool)
  total, count = max_margin_terms(sims, sims, 0, valid, margin, fix_norm)
  return total / count


def info_nce_loss(sims: Array, logit_scale: Array, valid: Array | None = None) -> Array:
  """Symmetric InfoNCE on a square `[n, n]` matrix (one device)."""
  if valid is None:
    valid = jnp.ones(sims.shape[0], bool)
  total, count = info_nce_terms(sims, sims, 0, valid, logit_scale)
  return total / count
