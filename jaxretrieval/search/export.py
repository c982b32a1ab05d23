r"""Exports an index to Qdrant, a vector database that shards and replicates collections
across machines, and searches the export with the exact mixture score.

  python -m jaxretrieval.search.export --index INDEX --qdrant http://HOST:6333 [--name NAME]
  python -m jaxretrieval.search.export --index INDEX --qdrant FOLDER  # embedded, no server

An item's score is sum_e w_e cos(text_e, audio_e) / sum_e w_e over the experts e it has.
Items sharing an availability pattern share that denominator, so each pattern becomes one
collection `NAME-<pattern>` (`NAME-11` holds the items with both of two experts, `NAME-01`
those lacking the first) of the item's available expert embeddings side by side, searched by
inner product with the query's weight-scaled embeddings of the same experts; the
denominator is applied when the patterns' top-k lists are merged. Points are numbered by
their row in the index and carry the item id as payload.
"""

import dataclasses
import pathlib
import sys

from absl import app, flags
import numpy as np

from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexFileError, IndexStore

QDRANT_CLIENT = 'qdrant-client==1.20.0'


def qdrant_client(location: str):
  """A client of the Qdrant server at a URL (http(s)://…), or an embedded Qdrant keeping its
  collections in a folder (':memory:': in memory)."""
  try:
    from qdrant_client import QdrantClient
  except ImportError as e:
    raise ImportError(f'the Qdrant export needs its client: pip install {QDRANT_CLIENT}') from e
  if location.startswith(('http://', 'https://')):
    return QdrantClient(url=location)
  return QdrantClient(location=location) if location == ':memory:' else QdrantClient(path=location)


def pattern_name(name: str, pattern) -> str:
  return f'{name}-{"".join(str(int(a)) for a in pattern)}'


def _columns(widths: tuple[int, ...], pattern) -> np.ndarray:
  """The columns of the side-by-side embeddings of the experts marked in `pattern`."""
  bounds = np.cumsum((0,) + tuple(widths))
  return np.concatenate([np.arange(bounds[m], bounds[m + 1])
                         for m, a in enumerate(pattern) if a])


def export_qdrant(store: IndexStore, client, name: str, batch: int = 4096) -> dict[str, int]:
  """Writes every item of `store` into the collections `name-<pattern>` (replacing them);
  returns collection -> number of items."""
  from qdrant_client import models
  patterns, which = np.unique(store.availability > 0, axis=0, return_inverse=True)
  counts = {}
  for p, pattern in enumerate(patterns):
    if not pattern.any():
      continue  # an item with no expert never scores
    collection = pattern_name(name, pattern)
    columns = _columns(store.widths, pattern)
    if client.collection_exists(collection):
      client.delete_collection(collection)
    client.create_collection(collection, vectors_config=models.VectorParams(
        size=len(columns), distance=models.Distance.DOT))
    rows = np.flatnonzero(which.reshape(-1) == p)
    for start in range(0, len(rows), batch):
      chosen = rows[start:start + batch]
      vectors = np.asarray(store.embeddings[chosen], np.float32)[:, columns]
      client.upsert(collection, points=models.Batch(
          ids=[int(r) for r in chosen], vectors=vectors.tolist(),
          payloads=[{'id': store.ids[r]} for r in chosen]))
    counts[collection] = len(rows)
  return counts


@dataclasses.dataclass(frozen=True)
class RemoteHit:
  rank: int  # from 1
  row: int  # in the exported index
  id: str
  score: float  # the mixture score, as `SearchEngine` ranks by


def search_qdrant(engine: SearchEngine, client, name: str, queries: list[str],
                  k: int = 10) -> list[list[RemoteHit]]:
  """The top `k` items of each query among the collections `name-<pattern>`: each
  pattern's own top-k by inner product, rescaled by the query's sum of weights over the
  pattern's experts, merged."""
  m = len(engine.names)
  patterns = [c.name[len(name) + 1:] for c in client.get_collections().collections
              if c.name.startswith(f'{name}-') and len(c.name) == len(name) + 1 + m
              and set(c.name[len(name) + 1:]) <= {'0', '1'}]
  if not patterns:
    raise ValueError(f'Qdrant has no collection {name}-<pattern>: export the index first '
                     f'(python -m jaxretrieval.search.export --index INDEX --name {name})')
  encoded = engine.encode(list(queries))
  results = []
  for text, weights in zip(encoded.text, encoded.weights):
    found = []
    for bits in patterns:
      pattern = np.array([b == '1' for b in bits])
      columns = _columns(engine.store.widths, pattern)
      scale = np.repeat(weights, engine.store.widths)[columns]
      points = client.query_points(pattern_name(name, pattern), query=(scale * text[columns]
                                                                       ).tolist(),
                                   limit=k, with_payload=True).points
      den = float(weights[pattern].sum())
      found += [(p.score / den, int(p.id), p.payload['id']) for p in points]
    found.sort(key=lambda f: -f[0])
    results.append([RemoteHit(r + 1, row, item, score)
                    for r, (score, row, item) in enumerate(found[:k])])
  return results


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    store = IndexStore.load(f.index)
    client = qdrant_client(f.qdrant)
  except (FileNotFoundError, IndexFileError, ImportError) as e:
    sys.exit(f'cannot export {f.index}: {e}')
  name = f.name or pathlib.Path(f.index).resolve().name
  for collection, n in export_qdrant(store, client, name).items():
    print(f'{collection}: {n} items')
  client.close()


if __name__ == '__main__':
  flags.DEFINE_string('index', None, 'index directory to export', required=True)
  flags.DEFINE_string('qdrant', None, 'Qdrant server URL (http://HOST:6333) or a folder for '
                      'an embedded Qdrant', required=True)
  flags.DEFINE_string('name', None, 'collection name prefix (default: the index folder name)')
  app.run(main)
