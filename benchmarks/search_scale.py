r"""Search index build memory, query latency and throughput at growing collection sizes,
beside FAISS's exact inner-product search on the same vectors.

  python -m benchmarks.search_scale [--sizes=10000,100000,1000000] [--embed_max=100000] \
      [--dtype=float32|float16] [--expert_dim=768] [--faiss_max=1000000]

The model is the SynthCaps CE architecture (log-mel + spectral experts, `--expert_dim`-d
embeddings each; 768 as trained) at random initialisation: timings do not depend on the
weights. Collections up to `--embed_max` items are embedded by the audio tower from random
features; larger ones are random unit embeddings generated one shard at a time. Either way
the index is written by `store.write_index` one shard (`build.SHARD_ITEMS` items) at a time;
the build's peak memory is the process's peak resident set after writing (model and JAX
included). Queries read the shards memory-mapped; the resident set after querying is split
into anonymous memory and mapped file pages (the page cache of the shards).

Query latency is the median of single queries (k = 10) after compilation, end to end (text
tower, scan of every item, hits); `scan` is the scan alone (what FAISS does), for one query
and for batches of 32 queries. FAISS (`IndexFlatIP`, float32 copy of the same vectors,
every core) searches with the same weight-scaled query embeddings; all items have every
expert, so its inner products are our scores, and its top-k ids are checked against ours.
"""

import pathlib
import resource
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

from benchmarks.common import emit, machine, table, timed
from configs import ce_synthcaps
from jaxretrieval import replicas
from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.embedding import Embedder
from jaxretrieval.models import RetrievalModel, dummy_inputs
from jaxretrieval.models.spec import model_spec
from jaxretrieval.search.build import SHARD_ITEMS
from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexStore, write_index
from jaxretrieval.text import WordVectors

_SIZES = flags.DEFINE_list('sizes', ['10000', '100000', '1000000'], 'collection sizes')
_EMBED_MAX = flags.DEFINE_integer('embed_max', 100000, 'largest size embedded by the model')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'float16'], 'index storage')
_EXPERT_DIM = flags.DEFINE_integer('expert_dim', 768, 'embedding width of each expert')
_FAISS_MAX = flags.DEFINE_integer('faiss_max', 1000000, 'largest size also searched by FAISS '
                                  '(it holds a float32 copy of the vectors in memory)')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'timed single queries per size')
QUERIES = ['a loud beep followed by hissing', 'quiet footsteps', 'a bell rings while wind blows',
           'rapid clicks then a low hum']


def items(spec, config, n, rng) -> SplitArrays:
  experts = {e.name: rng.normal(size=(n, config.max_tokens[e.name], e.dim)).astype(np.float32)
             for e in spec.experts}
  empty = np.zeros(n, np.int64)
  return SplitArrays('bench', [f'item{i}' for i in range(n)], [''] * n, experts,
                     {e.name: np.full(n, config.max_tokens[e.name], np.int32)
                      for e in spec.experts},
                     np.ones((n, len(spec.experts)), np.float32), np.zeros((0, 32), np.int32),
                     np.zeros(0, np.int32), empty, empty, [])


def random_unit(rows: int, widths: tuple[int, ...], rng) -> np.ndarray:
  """`[rows, sum widths]` random embeddings, unit norm per expert (uniform in a cube before
  normalising: cheaper to draw than Gaussians, and as good for timing)."""
  blocks = []
  for d in widths:
    block = rng.random((rows, d), np.float32) - 0.5
    blocks.append(block / np.linalg.norm(block, axis=1, keepdims=True))
  return np.concatenate(blocks, axis=1)


def shards(embed, n: int, m: int, dtype: str):
  """(embeddings, availability, items) per shard of `n` items: `embed(start, stop)` gives
  the embeddings of items start..stop."""
  for start in range(0, n, SHARD_ITEMS):
    stop = min(n, start + SHARD_ITEMS)
    ids = [f'item{i}' for i in range(start, stop)]
    yield (embed(start, stop).astype(dtype), np.ones((stop - start, m), np.float32),
           {'ids': ids, 'audio_paths': [''] * len(ids), 'captions': [[] for _ in ids],
            'durations': [None] * len(ids)})


def resident_gb() -> dict[str, float]:
  """This process's resident memory now: anonymous, and file pages mapped (the shards)."""
  status = dict(line.split(':', 1) for line in
                pathlib.Path('/proc/self/status').read_text().splitlines())
  kb = lambda key: int(status[key].split()[0]) / 1e6
  return {'rss_anon_gb': kb('RssAnon'), 'rss_file_gb': kb('RssFile')}


def peak_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def faiss_side(engine: SearchEngine, record: dict, ours: np.ndarray) -> None:
  """FAISS IndexFlatIP over the same vectors: add time, one query, batches of 32."""
  import faiss
  start = time.perf_counter()
  index = faiss.IndexFlatIP(engine.store.embeddings.shape[1])
  for part in getattr(engine.store.embeddings, 'parts', [engine.store.embeddings]):
    index.add(np.asarray(part, np.float32))
  record['faiss_add_s'] = time.perf_counter() - start
  one = scaled(engine, engine.encode(QUERIES[:1]))
  batch = scaled(engine, engine.encode(QUERIES * 8))
  _, ids = index.search(batch, 10)
  record['faiss_same_top10'] = float(np.mean(ids == ours))
  single = timed(lambda: index.search(one, 10), repeats=_REPEATS.value)
  many = timed(lambda: index.search(batch, 10), repeats=5)
  record.update(faiss_query_ms=1000 * single['median_s'],
                faiss_batch32_queries_per_s=len(batch) / many['median_s'])


def scaled(engine: SearchEngine, encoded) -> np.ndarray:
  """`[Q, D]` query embeddings with each expert's block scaled by its mixture weight: for
  items with every expert, the inner product with an item is its score."""
  return encoded.text * np.repeat(encoded.weights, engine.store.widths, axis=1)


def main(argv):
  del argv
  config = ce_synthcaps.get_config()
  config.model.shared_dim = _EXPERT_DIM.value
  spec = model_spec(config)
  model = RetrievalModel(spec)
  variables = model.init(jax.random.key(0), dummy_inputs(spec), train=False)
  rng = np.random.default_rng(0)
  vocabulary = sorted({w for q in QUERIES for w in q.split()})
  words = WordVectors({w: rng.normal(size=300) for w in vocabulary})
  embedder = Embedder(model, 2048)
  widths, m = spec.embed_dims(), len(spec.experts)
  rows = []
  for n in map(int, _SIZES.value):
    record = {'benchmark': 'search_scale', 'items': n, 'dtype': _DTYPE.value,
              'dim': sum(widths), **machine()}
    start = time.perf_counter()
    if n <= _EMBED_MAX.value:
      audio = embedder.items(replicas.replicate(variables), items(spec, config, n, rng))
      embedded = np.concatenate([audio[e] for e in spec.expert_names], axis=1)
      embed = lambda a, b: embedded[a:b]
      record['embed_items_per_s'] = n / (time.perf_counter() - start)
    else:
      embed = lambda a, b: random_unit(b - a, widths, rng)
    with tempfile.TemporaryDirectory(dir='/tmp') as tmp:
      header = IndexStore(spec, 32, np.zeros((0, sum(widths)), _DTYPE.value),
                          np.zeros((0, m), np.float32), [], [], variables, words)
      write_index(tmp, header, shards(embed, n, m, _DTYPE.value))
      embed = embedded = None
      record['build_s'] = time.perf_counter() - start
      record['build_peak_rss_gb'] = peak_gb()
      start = time.perf_counter()
      engine = SearchEngine(IndexStore.load(tmp))
      engine.warm_up(10)
      record['load_s'] = time.perf_counter() - start
      single = timed(lambda: engine.search(QUERIES[0], 10), repeats=_REPEATS.value)
      batch = QUERIES * 8
      many = timed(lambda: engine.search_batch(batch, 10), repeats=5)
      one, encoded = engine.encode(QUERIES[:1]), engine.encode(batch)
      scan_one = timed(lambda: engine.rank(one, 10), repeats=_REPEATS.value)
      scan_many = timed(lambda: engine.rank(encoded, 10), repeats=5)
      record.update(query_ms=1000 * single['median_s'],
                    batch32_queries_per_s=len(batch) / many['median_s'],
                    scan_ms=1000 * scan_one['median_s'],
                    scan_batch32_queries_per_s=len(batch) / scan_many['median_s'],
                    **resident_gb(), peak_rss_gb=peak_gb())
      if n <= _FAISS_MAX.value:
        faiss_side(engine, record, engine.rank(encoded, 10)[1])
      engine = None  # frees the index before the next size
    emit(record)
    rows.append(record)
  print(table(rows, ['items', 'dtype', 'dim', 'build_s', 'build_peak_rss_gb', 'query_ms',
                     'batch32_queries_per_s', 'scan_ms', 'scan_batch32_queries_per_s',
                     'faiss_query_ms', 'faiss_batch32_queries_per_s', 'faiss_same_top10',
                     'rss_anon_gb', 'rss_file_gb']))


if __name__ == '__main__':
  app.run(main)
