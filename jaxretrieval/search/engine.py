"""Free-text queries against an audio index.

A query is tokenised and its words mapped to word vectors (an unknown word to another case
or inflection of a vocabulary word, reported as a substitution; `WordVectors.encode_query`),
zero-padded to the model's text length (as in training: NetVLAD sees the padding) and
encoded by the text tower. A query longer than that length is not cut: NetVLAD sums over
tokens, so the tower takes all of its words, zero-padded to the next multiple of the length
(a few compiled shapes serve every query; each is compiled on its first use). Its
score for item j is sum_e W_e cos(text_e, audio_e[j]) with the mixture weights renormalised
over the experts item j has, exactly as in training: one matrix product of the query's
weight-scaled embedding with each chunk of items, divided by the item's sum of weights
(1 for items with every expert). Scores and the running top-k are computed in fixed-size
chunks of items read in place from the memory-mapped shards (on CPU nothing is copied, so
an index larger than memory is searched from the page cache and disk), each chunk split
over all local devices whose top-k lists are merged. The top-k runs for k rounded up to a
power of two, so a handful of compiled programs serve every k and `warm_up` can compile them
all before the first query.
"""

import dataclasses
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxretrieval.models import RetrievalModel
from jaxretrieval.models.similarity import query_side, side_scores
from jaxretrieval.search.store import IndexStore, ShardRows
from jaxretrieval.text import tokenize

MODEL_NAMES = {'ce': 'Collaborative Experts', 'mimic': 'single-expert CE',
               'moee': 'Mixture of Embedded Experts'}

MAX_QUERY_CHARS = 500


class QueryError(ValueError):
  """A query that cannot be searched (empty, or no known word)."""


@dataclasses.dataclass(frozen=True)
class Hit:
  """One ranked item: score = sum over experts of weights[e] * cosines[e]."""
  rank: int  # from 1
  row: int  # in the index
  id: str
  score: float
  cosines: dict[str, float | None]  # expert -> cosine of query and item; None: item lacks it
  weights: dict[str, float]  # the query's mixture weights renormalised over the item's experts
  path: str  # the audio file ('' when unknown)
  captions: list[str]  # the item's captions where the dataset has them
  duration: float | None  # seconds, when the audio file was readable at index time


@dataclasses.dataclass(frozen=True)
class SearchResult:
  query: str
  tokens: list[str]
  unknown: list[str]  # words without a vocabulary form: ignored
  substitutions: dict[str, str]  # query word -> the vocabulary word read for it
  weights: dict[str, float]  # the query's mixture weights, before renormalisation
  hits: list[Hit]


@dataclasses.dataclass(frozen=True)
class EncodedQueries:
  """Queries through the text tower: per-expert unit-norm embeddings side by side
  `text` `[Q, sum d_e]`, mixture weights `[Q, M]`, and how each query's words were read."""
  text: np.ndarray
  weights: np.ndarray
  words: list  # jaxretrieval.text.QueryWords per query


@functools.partial(jax.jit, static_argnames=('k', 'mesh'), donate_argnums=(0, 1))
def _merge_chunk(values, index, lhs, weights, rhs, avail, start, k: int, mesh: Mesh):
  """The running top-k `[Q, k]` updated with one chunk of items (`rhs` `[C, D]`, its rows
  split over the devices of `mesh`: each device ranks its own rows, then their top-k lists
  are gathered and merged)."""

  def device_top_k(lhs, weights, rhs, avail):
    scores = side_scores(lhs, weights, rhs.astype(lhs.dtype), avail)  # [Q, C]
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)  # rows with no expert: padding
    top, rows = jax.lax.top_k(scores, min(k, rhs.shape[0]))
    rows = rows + jax.lax.axis_index('items') * rhs.shape[0]
    return (jax.lax.all_gather(top, 'items', axis=1, tiled=True),
            jax.lax.all_gather(rows, 'items', axis=1, tiled=True))

  chunk_values, chunk_index = jax.shard_map(
      device_top_k, mesh=mesh, in_specs=(P(), P(), P('items'), P('items')), out_specs=P(),
      check_vma=False)(lhs, weights, rhs, avail)
  merged_values = jnp.concatenate([values, chunk_values], axis=1)
  merged_index = jnp.concatenate([index, chunk_index + start], axis=1)
  top, where = jax.lax.top_k(merged_values, k)
  return top, jnp.take_along_axis(merged_index, where, axis=1)


def _top_k_size(k: int, n: int) -> int:
  """k rounded up to a power of two (at most n): the k the top-k is compiled for."""
  return min(1 << (k - 1).bit_length(), n)


class SearchEngine:
  """Encodes queries and ranks the indexed items."""

  def __init__(self, store: IndexStore, chunk: int = 65536, devices=None):
    """Ranks `chunk` items at a time, each chunk's rows split over `devices` (default: every
    local device)."""
    self.store = store
    self.names = store.spec.expert_names
    self.bounds = np.cumsum((0,) + store.widths)
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = Mesh(np.array(devices), ('items',))
    items = NamedSharding(self.mesh, P('items'))
    self.chunk = max(1, min(chunk, len(store)) // len(devices)) * len(devices)
    # Chunks of items are views of the (memory-mapped) shards: on CPU the devices read the
    # shard files in place (zero-copy), accelerators hold a copy. A shard's last rows form a
    # shorter chunk (compiled once per length), and its last `len(devices) - 1` rows or
    # fewer one that is copied and padded with rows that have no expert and so never score.
    parts = (store.embeddings.parts if isinstance(store.embeddings, ShardRows)
             else [store.embeddings])
    self.chunks, row = [], 0  # (embeddings, availability, first row)
    for part in parts:
      n, start = len(part), 0
      while start < n:
        size = min(self.chunk, (n - start) // len(devices) * len(devices)) or len(devices)
        emb = part[start:start + size]
        avail = np.asarray(store.availability[row:row + len(emb)], np.float32)
        pad = size - len(emb)
        if pad:
          emb, avail = np.pad(emb, ((0, pad), (0, 0))), np.pad(avail, ((0, pad), (0, 0)))
        self.chunks.append((jax.device_put(emb, items), jax.device_put(avail, items), row))
        row += size - pad
        start += size - pad
    model = RetrievalModel(store.spec)
    self._encode = jax.jit(lambda v, text: model.apply(v, text, False,
                                                       method=RetrievalModel.encode_text))
    self.variables = jax.device_put(store.variables)

  def warm_up(self, max_k: int) -> None:
    """Builds the stem table of the vocabulary and compiles the text tower (for queries up
    to the training length) and the top-k of every k up to `max_k` for one query."""
    words = self.store.words
    words.stems()
    text = np.zeros((1, self.store.text_tokens, words.dim), np.float32)
    emb, weights = self._encode(self.variables, text)
    lhs = self._weighted(jnp.concatenate([emb[e] for e in self.names], axis=1), weights)
    for k in sorted({_top_k_size(k, len(self.store)) for k in range(1, max_k + 1)}):
      jax.block_until_ready(self._top_k(lhs, weights, k))

  def _weighted(self, text, weights):
    """`[Q, D]`: the query side of the similarity (`similarity.query_side`) of `text`, the
    per-expert embeddings side by side."""
    blocks = {e: text[:, self.bounds[i]:self.bounds[i + 1]] for i, e in enumerate(self.names)}
    return query_side(blocks, weights, self.names)

  def _top_k(self, lhs, weights, k: int):
    """Scores and rows `[Q, k]` of the best items, chunk by chunk."""
    # NumPy: outside a trace, each jnp array of a new shape would compile a program.
    values = jax.device_put(np.full((lhs.shape[0], k), -np.inf, np.float32))
    index = jax.device_put(np.zeros((lhs.shape[0], k), np.int32))
    for rhs, avail, start in self.chunks:
      values, index = _merge_chunk(values, index, lhs, weights, rhs, avail, start, k, self.mesh)
    return values, index

  def encode(self, queries: list[str]) -> EncodedQueries:
    """The queries through the text tower; QueryError for one that cannot be searched."""
    words, t = self.store.words, self.store.text_tokens
    read = []
    for q in queries:
      if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f'query of {len(q)} characters; at most {MAX_QUERY_CHARS}')
      r = words.encode_query(q)
      if not r.tokens:
        raise QueryError('empty query: type a few words describing the sound')
      if not len(r.vectors):
        raise QueryError(f'no word of the query {q!r} is in the vocabulary '
                         f'({len(words.words)} words); unknown: {", ".join(r.unknown)}')
      read.append(r)
    text = np.zeros((len(queries), sum(self.store.widths)), np.float32)
    weights = np.zeros((len(queries), len(self.names)), np.float32)
    # Queries of one padded length go through the tower together.
    lengths = [t * -(-len(r.vectors) // t) for r in read]
    for length in sorted(set(lengths)):
      rows = [i for i, n in enumerate(lengths) if n == length]
      batch = np.zeros((len(rows), length, words.dim), np.float32)
      for j, i in enumerate(rows):
        batch[j, :len(read[i].vectors)] = read[i].vectors
      emb, w = self._encode(self.variables, batch)
      text[rows] = np.concatenate([np.asarray(emb[e]) for e in self.names], axis=1)
      weights[rows] = np.asarray(w)
    return EncodedQueries(text, weights, read)

  def rank(self, encoded: EncodedQueries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and rows `[Q, k]` of the `k` best items for encoded queries (score -inf past
    the items that can score)."""
    weights = jax.device_put(encoded.weights)
    lhs = self._weighted(jax.device_put(encoded.text), weights)
    values, index = self._top_k(lhs, weights, _top_k_size(k, len(self.store)))
    return np.asarray(values)[:, :k], np.asarray(index)[:, :k]

  def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResult]:
    """The top `k` items of each query (k is capped at the index size)."""
    k = max(1, min(k, len(self.store)))
    encoded = self.encode(queries)
    values, index = self.rank(encoded, k)
    results = []
    for i, q in enumerate(queries):
      read, w = encoded.words[i], encoded.weights[i]
      hits = [self._hit(r + 1, int(index[i, r]), float(values[i, r]), encoded.text[i], w)
              for r in range(k) if np.isfinite(values[i, r])]
      results.append(SearchResult(q, read.tokens, read.unknown, read.substitutions,
                                  {e: float(w[m]) for m, e in enumerate(self.names)}, hits))
    return results

  def search(self, query: str, k: int = 10) -> SearchResult:
    return self.search_batch([query], k)[0]

  def describe(self, examples: int = 3) -> dict:
    """What is indexed: name, item count, model, experts, and example queries."""
    store = self.store
    return {'name': store.provenance.get('data', ''), 'items': len(store),
            'model': MODEL_NAMES.get(store.spec.variant, store.spec.variant),
            'experts': list(self.names), 'examples': self.example_queries(examples)}

  def example_queries(self, n: int) -> list[str]:
    """Up to `n` searchable queries drawn from the collection: captions of items spread
    over the index, else the vocabulary words of their file names."""
    store, found = self.store, []
    for row in np.linspace(0, len(store) - 1, min(len(store), 8 * n)).astype(int):
      if store.captions[row]:
        text = store.captions[row][0]
      else:
        name = pathlib.Path(store.audio_paths[row] or store.ids[row]).stem
        text = ' '.join(w for w in tokenize(re.sub(r'[_.]', ' ', name))
                        if store.words.known_form(w) and not w.isdigit())
      if (text and len(text) <= MAX_QUERY_CHARS and text not in found
          and len(store.words.encode_query(text).vectors)):
        found.append(text)
      if len(found) == n:
        break
    return found

  def _hit(self, rank: int, row: int, score: float, text: np.ndarray, weights: np.ndarray) -> Hit:
    """The hit with each expert's renormalised weight and cosine similarity."""
    store = self.store
    avail = store.availability[row]
    emb = np.asarray(store.embeddings[row], np.float32)
    total = float(np.sum(weights * avail))
    cosines, renormalised = {}, {}
    for m, e in enumerate(self.names):
      block = slice(self.bounds[m], self.bounds[m + 1])
      renormalised[e] = float(weights[m] * avail[m] / total)
      cosines[e] = float(text[block] @ emb[block]) if avail[m] else None
    return Hit(rank, row, store.ids[row], score, cosines, renormalised, store.audio_paths[row],
               store.captions[row], store.durations[row])
