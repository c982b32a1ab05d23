"""The Python API of search: `from jaxretrieval import Searcher`.

  searcher = Searcher.load('workdirs/synthcaps_index')
  for hit in searcher.search('a dog barks while a car passes', k=5).hits:
    print(hit.rank, hit.id, f'{hit.score:.3f}', hit.cosines, hit.path, hit.captions)

Results are `SearchResult` records of `Hit`s (engine.py). `embed_text` and `embed_audio`
give the two towers' embeddings for use elsewhere: per-expert unit-norm vectors side by side
(`[N, sum d_e]`, the layout of the index), with the query's mixture weights or the items'
availability; `score` combines them as the search does.
"""

import dataclasses
import pathlib

import jax
import numpy as np

from jaxretrieval.models import RetrievalModel
from jaxretrieval.search.engine import SearchEngine, SearchResult
from jaxretrieval.search.store import IndexStore


@dataclasses.dataclass(frozen=True)
class TextEmbeddings:
  vectors: np.ndarray  # [Q, sum d_e]: each expert's unit-norm query embedding, side by side
  weights: np.ndarray  # [Q, M]: the query's mixture weights over the experts
  experts: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class AudioEmbeddings:
  vectors: np.ndarray  # [N, sum d_e]: each expert's unit-norm embedding (zeros where missing)
  availability: np.ndarray  # [N, M]: 1 where the item has the expert
  experts: tuple[str, ...]


class Searcher:
  """Text search over an index, and the model's text and audio towers."""

  def __init__(self, engine: SearchEngine):
    self.engine = engine
    self.store = engine.store
    self.experts = tuple(self.store.spec.expert_names)
    model = RetrievalModel(self.store.spec)
    self._audio = jax.jit(lambda v, x, a, n: model.apply(v, x, a, False, lengths=n,
                                                         method=RetrievalModel.encode_audio))

  @classmethod
  def load(cls, index: str | pathlib.Path, chunk: int = 65536) -> 'Searcher':
    """The searcher of an index directory (`python -m jaxretrieval.search.index`); items are
    scored on the device `chunk` at a time."""
    return cls(SearchEngine(IndexStore.load(index), chunk))

  def __len__(self) -> int:
    return len(self.store)

  def search(self, text: str, k: int = 10) -> SearchResult:
    """The `k` best items for a query (`QueryError` when no word of it is known)."""
    return self.engine.search(text, k)

  def search_batch(self, texts: list[str], k: int = 10) -> list[SearchResult]:
    """`search` of several queries at once (one pass of the text tower and of the index)."""
    return self.engine.search_batch(list(texts), k)

  def embed_text(self, texts: list[str]) -> TextEmbeddings:
    """The text tower's embeddings of queries, read as `search` reads them."""
    encoded = self.engine.encode(list(texts))
    return TextEmbeddings(encoded.text, encoded.weights, self.experts)

  def embed_audio(self, features: dict[str, np.ndarray],
                  availability: np.ndarray | None = None) -> AudioEmbeddings:
    """The audio tower's embeddings of items given their expert features: expert ->
    `[N, T, d]` for temporal (NetVLAD) experts, `[N, d]` otherwise, as the index was built
    from (a features folder's). `availability` `[N, M]` marks missing experts (default:
    every item has every expert)."""
    specs = {e.name: e for e in self.store.spec.experts}
    missing = [e for e in self.experts if e not in features]
    if missing or set(features) - set(specs):
      raise ValueError(f'features for experts {sorted(features)}; the model reads exactly '
                       f'{list(self.experts)}')
    n = len(next(iter(features.values())))
    for name, x in features.items():
      want = 3 if specs[name].temporal == 'vlad' else 2
      if np.ndim(x) != want or len(x) != n or np.shape(x)[-1] != specs[name].dim:
        raise ValueError(f'features[{name!r}] has shape {np.shape(x)}; expected {n} items of '
                         f'{"[T, " if want == 3 else "["}{specs[name].dim}]')
    availability = (np.ones((n, len(self.experts)), np.float32) if availability is None
                    else np.asarray(availability, np.float32))
    inputs, lengths = {}, {}
    for e, x in features.items():
      x = np.asarray(x, np.float32)
      if x.ndim == 3:  # truncated and zero-padded to the training length, as the index was
        limit = (self.store.max_tokens or {}).get(e, x.shape[1])
        x = np.pad(x[:, :limit], ((0, 0), (0, max(0, limit - x.shape[1])), (0, 0)))
        lengths[e] = np.full((n,), min(limit, np.shape(features[e])[1]), np.int32)
      else:
        lengths[e] = np.ones((n,), np.int32)
      inputs[e] = x
    audio = self._audio(self.engine.variables, inputs, availability, lengths)
    vectors = np.concatenate([np.where(availability[:, i:i + 1] > 0, np.asarray(audio[e]), 0.0)
                              for i, e in enumerate(self.experts)], axis=1)
    return AudioEmbeddings(vectors.astype(np.float32), availability, self.experts)

  def score(self, text: TextEmbeddings, audio: AudioEmbeddings) -> np.ndarray:
    """`[Q, N]` scores: sum_e w_e cos(text_e, audio_e), the weights renormalised over each
    item's experts (what `search` ranks by)."""
    bounds = np.cumsum((0,) + self.store.widths)
    cosines = np.stack([text.vectors[:, a:b] @ audio.vectors[:, a:b].T
                        for a, b in zip(bounds[:-1], bounds[1:])], axis=-1)  # [Q, N, M]
    weights = text.weights[:, None, :] * audio.availability[None]
    return (weights * cosines).sum(-1) / weights.sum(-1)
