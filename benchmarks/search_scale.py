r"""Search index build time and query latency at growing collection sizes.

  python -m benchmarks.search_scale [--sizes=10000,100000,1000000] [--embed_max=100000]

The model is the SynthCaps CE architecture (log-mel + spectral experts, 768-d embeddings)
at random initialisation: timings do not depend on the weights. Collections up to
`--embed_max` items are embedded by the audio tower from random features (index build =
embedding + writing + loading onto the device); larger ones use random unit embeddings
(build = writing + loading). Query latency is the median of single queries (k = 10) after
compilation; throughput is measured with batches of 32 queries.
"""

import pathlib
import tempfile
import time

from absl import app
from absl import flags
from flax import jax_utils
import jax
import numpy as np

from benchmarks.common import emit, machine, peak_host_memory_gb, table, timed
from configs import ce_synthcaps
from jaxretrieval.embedding import Embedder
from jaxretrieval.models.spec import model_spec
from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.models import RetrievalModel, dummy_inputs
from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexStore
from jaxretrieval.text import WordVectors

_SIZES = flags.DEFINE_list('sizes', ['10000', '100000', '1000000'], 'collection sizes')
_EMBED_MAX = flags.DEFINE_integer('embed_max', 100000, 'largest size embedded by the model')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'float16'], 'index storage')
QUERIES = ['a loud beep followed by hissing', 'quiet footsteps', 'a bell rings while wind blows',
           'rapid clicks then a low hum']


def items(spec, config, n, rng) -> SplitArrays:
  experts = {e.name: rng.normal(size=(n, config.max_tokens[e.name], e.dim)).astype(np.float32)
             for e in spec.experts}
  empty = np.zeros(n, np.int64)
  return SplitArrays('bench', [f'item{i}' for i in range(n)], [''] * n, experts,
                   {e.name: np.full(n, config.max_tokens[e.name], np.int32) for e in spec.experts},
                   np.ones((n, len(spec.experts)), np.float32), np.zeros((0, 32), np.int32),
                   np.zeros(0, np.int32), empty, empty, [])


def main(argv):
  del argv
  config = ce_synthcaps.get_config()
  spec = model_spec(config)
  model = RetrievalModel(spec)
  variables = model.init(jax.random.key(0), dummy_inputs(spec), train=False)
  rng = np.random.default_rng(0)
  vocabulary = sorted({w for q in QUERIES for w in q.split()})
  words = WordVectors({w: rng.normal(size=300) for w in vocabulary})
  embedder = Embedder(model, 2048)
  rows = []
  for n in map(int, _SIZES.value):
    record = {'benchmark': 'search_scale', 'items': n, 'dtype': _DTYPE.value, **machine()}
    start = time.perf_counter()
    if n <= _EMBED_MAX.value:
      audio = embedder.items(jax_utils.replicate(variables), items(spec, config, n, rng))
      embeddings = np.concatenate([audio[e] for e in spec.expert_names], axis=1)
      record['embed_items_per_s'] = n / (time.perf_counter() - start)
    else:
      embeddings = rng.standard_normal((n, 2 * 768), np.float32)
      for part in np.array_split(np.arange(n), max(1, n // 65536)):  # unit norm per expert
        block = embeddings[part].reshape(len(part), 2, 768)
        embeddings[part] = (block / np.linalg.norm(block, axis=2, keepdims=True)).reshape(
            len(part), -1)
    with tempfile.TemporaryDirectory() as tmp:
      store = IndexStore(spec, 32, embeddings.astype(_DTYPE.value, copy=False),
                         np.ones((n, 2), np.float32), [f'item{i}' for i in range(n)], [''] * n,
                         variables, words)
      store.save(pathlib.Path(tmp))
      del embeddings, store
      engine = SearchEngine(IndexStore.load(tmp))
      jax.block_until_ready(engine.chunks)
      record['build_s'] = time.perf_counter() - start
      single = timed(lambda: engine.search(QUERIES[0], 10), repeats=20)
      batch = QUERIES * 8
      many = timed(lambda: engine.search_batch(batch, 10), repeats=5)
    record.update(query_latency_ms=1000 * single['median_s'],
                  batch32_queries_per_s=len(batch) / many['median_s'],
                  peak_host_memory_gb=peak_host_memory_gb())
    emit(record)
    rows.append(record)
    engine = None  # frees the index before the next size
  print(table(rows, ['items', 'build_s', 'embed_items_per_s', 'query_latency_ms',
                     'batch32_queries_per_s', 'peak_host_memory_gb']))


if __name__ == '__main__':
  app.run(main)
