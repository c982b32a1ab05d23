"""Free-text queries against an audio index.

A query is tokenised and mapped to word vectors, truncated and zero-padded to the model's
text length (as in training: NetVLAD sees the padding), and encoded by the text tower. Its
score for item j is sum_e W_e cos(text_e, audio_e[j]) with the mixture weights renormalised
over the experts item j has, exactly as in training. Scores and the running top-k are
computed on the device in fixed-size chunks of items, so millions of items fit. The top-k
runs for k rounded up to a power of two, so a handful of compiled programs serve every k
and `warm_up` can compile them all before the first query.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.models import RetrievalModel
from jaxretrieval.search.store import IndexStore
from jaxretrieval.text import tokenize

MAX_QUERY_CHARS = 500


class QueryError(ValueError):
  """A query that cannot be searched (empty, or no known word)."""


@dataclasses.dataclass
class Hit:
  rank: int
  row: int
  id: str
  audio_path: str
  score: float
  experts: dict[str, dict[str, float]]  # expert -> {'weight', 'similarity'}


@dataclasses.dataclass
class SearchResult:
  query: str
  tokens: list[str]
  unknown: list[str]
  weights: dict[str, float]  # the query's mixture weights, before renormalisation
  hits: list[Hit]


@functools.partial(jax.jit, static_argnames=('k',), donate_argnums=(0, 1))
def _merge_chunk(values, index, lhs, weights, rhs, avail, start, k: int):
  """The running top-k `[Q, k]` updated with one chunk of items (`rhs` `[C, D]`)."""
  den = weights @ avail.T  # [Q, C]: sum of the weights of the experts each item has
  scores = jnp.where(den > 0, (lhs @ rhs.T.astype(lhs.dtype)) / jnp.where(den > 0, den, 1.0),
                     -jnp.inf)
  chunk_values, chunk_index = jax.lax.top_k(scores, min(k, rhs.shape[0]))
  merged_values = jnp.concatenate([values, chunk_values], axis=1)
  merged_index = jnp.concatenate([index, chunk_index + start], axis=1)
  top, where = jax.lax.top_k(merged_values, k)
  return top, jnp.take_along_axis(merged_index, where, axis=1)


def _top_k_size(k: int, n: int) -> int:
  """k rounded up to a power of two (at most n): the k the top-k is compiled for."""
  return min(1 << (k - 1).bit_length(), n)


class SearchEngine:
  """Encodes queries and ranks the indexed items."""

  def __init__(self, store: IndexStore, chunk: int = 65536):
    self.store = store
    self.names = store.spec.expert_names
    self.bounds = np.cumsum((0,) + store.widths)
    n = len(store)
    self.chunk = min(chunk, n)
    # One device array per chunk of items, read from the (memory-mapped) store chunk by
    # chunk, so the embeddings are never held twice; the last chunk is padded with rows
    # that have no expert and so never score.
    self.chunks = []
    for start in range(0, n, self.chunk):
      emb = np.asarray(store.embeddings[start:start + self.chunk])
      avail = np.asarray(store.availability[start:start + self.chunk], np.float32)
      pad = self.chunk - len(emb)
      self.chunks.append(jax.device_put((np.pad(emb, ((0, pad), (0, 0))),
                                         np.pad(avail, ((0, pad), (0, 0))))))
    model = RetrievalModel(store.spec)
    self._encode = jax.jit(lambda v, text: model.apply(v, text, False,
                                                       method=RetrievalModel.encode_text))
    self.variables = jax.device_put(store.variables)

  def warm_up(self, max_k: int) -> None:
    """Compiles the text tower and the top-k of every k up to `max_k` for one query."""
    words = self.store.words
    text = np.zeros((1, self.store.text_tokens, words.dim), np.float32)
    lhs, _, weights = self._embed(text)
    for k in sorted({_top_k_size(k, len(self.store)) for k in range(1, max_k + 1)}):
      jax.block_until_ready(self._top_k(lhs, weights, k))

  def _embed(self, text: np.ndarray):
    """Weighted text `[Q, D]`, text `[Q, D]` and mixture weights `[Q, M]` of word vectors."""
    emb, weights = self._encode(self.variables, jnp.asarray(text))
    text_cat = jnp.concatenate([emb[e] for e in self.names], axis=1)
    lhs = jnp.concatenate([weights[:, i:i + 1] * emb[e] for i, e in enumerate(self.names)], 1)
    return lhs, text_cat, weights

  def _top_k(self, lhs, weights, k: int):
    """Scores and rows `[Q, k]` of the best items, chunk by chunk."""
    values = jnp.full((lhs.shape[0], k), -jnp.inf)
    index = jnp.zeros((lhs.shape[0], k), jnp.int32)
    for c, (rhs, avail) in enumerate(self.chunks):
      values, index = _merge_chunk(values, index, lhs, weights, rhs, avail,
                                   c * self.chunk, k)
    return values, index

  def encode(self, queries: list[str]):
    """Token lists, unknown words, weighted text `[Q, D]`, text `[Q, D]`, weights `[Q, M]`."""
    words, t = self.store.words, self.store.text_tokens
    text = np.zeros((len(queries), t, words.dim), np.float32)
    tokens, unknown = [], []
    for i, q in enumerate(queries):
      if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f'query of {len(q)} characters; at most {MAX_QUERY_CHARS}')
      vectors, missing = words.encode(q)
      tokens.append(tokenize(q))
      unknown.append(missing)
      if not tokens[-1]:
        raise QueryError('empty query: type a few words describing the sound')
      if not len(vectors):
        raise QueryError(f'no word of the query {q!r} is in the vocabulary '
                         f'({len(words.words)} words); unknown: {", ".join(missing)}')
      vectors = vectors[:t]
      text[i, :len(vectors)] = vectors
    return (tokens, unknown) + self._embed(text)

  def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResult]:
    k = max(1, min(k, len(self.store)))
    tokens, unknown, lhs, text_cat, weights = self.encode(queries)
    values, index = self._top_k(lhs, weights, _top_k_size(k, len(self.store)))
    values, index = np.asarray(values)[:, :k], np.asarray(index)[:, :k]
    text_cat, weights = np.asarray(text_cat), np.asarray(weights)
    return [SearchResult(q, tokens[i], unknown[i],
                         {e: float(weights[i, m]) for m, e in enumerate(self.names)},
                         [self._hit(r + 1, int(index[i, r]), float(values[i, r]), text_cat[i],
                                    weights[i]) for r in range(k) if np.isfinite(values[i, r])])
            for i, q in enumerate(queries)]

  def search(self, query: str, k: int = 10) -> SearchResult:
    return self.search_batch([query], k)[0]

  def _hit(self, rank: int, row: int, score: float, text: np.ndarray, weights: np.ndarray) -> Hit:
    """The hit with each expert's renormalised weight and cosine similarity."""
    store = self.store
    avail = store.availability[row]
    emb = np.asarray(store.embeddings[row], np.float32)
    total = float(np.sum(weights * avail))
    experts = {}
    for m, e in enumerate(self.names):
      block = slice(self.bounds[m], self.bounds[m + 1])
      experts[e] = {'weight': float(weights[m] * avail[m] / total),
                    'similarity': float(text[block] @ emb[block]) if avail[m] else None}
    return Hit(rank, row, store.ids[row], store.audio_paths[row], score, experts)
