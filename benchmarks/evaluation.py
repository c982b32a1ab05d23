r"""Full retrieval evaluation time against the size of the pool.

  python -m benchmarks.evaluation [--pools=1045,1000,5000,20000] [--variant=ce]
      [--dataset=clotho] [--captions=5]

Each pool of N items with 5 captions each (CLOTHO shapes by default: VGGish 31, VGGSound
95, text 21 tokens) is evaluated exactly as `evaluate_split` does at test time: embed the
items and the N x 5 captions over all local devices, the [5N, N] similarity matrix, then
t2a and a2t ranks and metrics (similarities and ranks on device, in caption chunks). Times
are after compilation (validation runs every epoch with the same shapes, so it compiles once
per run); the first call's time is reported too.
"""

import time

from absl import app
from absl import flags
from flax import jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, machine, synthetic_split, table, timed
from configs import common
from jaxretrieval.evaluation import Embedder, split_metrics
from jaxretrieval.experts import model_spec
from jaxretrieval.input_pipeline import eval_queries
from jaxretrieval.models import RetrievalModel

_POOLS = flags.DEFINE_list('pools', ['1045', '1000', '5000', '20000'], 'items per pool')
_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_DATASET = flags.DEFINE_enum('dataset', 'clotho', ['clotho', 'audiocaps'], 'shapes')
_CAPTIONS = flags.DEFINE_integer('captions', 5, 'captions (queries) per item')


def main(argv):
  del argv
  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  spec = model_spec(config)
  model = RetrievalModel(spec)
  sample = {'experts': {e.name: jnp.zeros((2, config.max_tokens[e.name], e.dim))
                        for e in spec.experts},
            'availability': jnp.ones((2, len(spec.experts))),
            'text': jnp.zeros((2, config.max_tokens['text'], 300))}
  variables = jax_utils.replicate(model.init(jax.random.key(0), sample, train=False))
  embedder = Embedder(model, max(1, config.eval_chunk // jax.local_device_count()))
  rng = np.random.default_rng(0)
  table_ = jax_utils.replicate(jnp.asarray(rng.standard_normal((1000, 300), np.float32)))
  rows = []
  for n in map(int, _POOLS.value):
    data = synthetic_split(config, spec, n, rng, captions=_CAPTIONS.value)
    parts = {}

    def run():
      t0 = time.perf_counter()
      audio = embedder.items(variables, data)
      t1 = time.perf_counter()
      query_rows, masks = eval_queries(data, _CAPTIONS.value)
      text, weights = embedder.captions(variables, data, query_rows, table_)
      t2 = time.perf_counter()
      split_metrics(text, weights, audio, data.availability, masks)
      t3 = time.perf_counter()
      parts.update(embed_items_s=t1 - t0, embed_captions_s=t2 - t1,
                   similarity_and_ranks_s=t3 - t2)

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    timing = timed(run, repeats=3, warmup=0)
    record = {'benchmark': 'evaluation', 'dataset_shapes': _DATASET.value,
              'variant': _VARIANT.value, 'items': n, 'queries': n * _CAPTIONS.value,
              'total_s': timing['median_s'], 'first_call_s': first, **parts, **machine()}
    emit(record)
    rows.append(record)
  print(table(rows, ['items', 'queries', 'total_s', 'embed_items_s', 'embed_captions_s',
                     'similarity_and_ranks_s', 'first_call_s']))


if __name__ == '__main__':
  app.run(main)
