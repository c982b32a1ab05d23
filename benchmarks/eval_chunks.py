r"""The evaluation towers against the chunk size: which `config.eval_chunk` runs fastest.

  python -m benchmarks.eval_chunks [--chunks=256,512,1024,2048,4096,8192] [--items=1045]
      [--variant=ce] [--dataset=clotho] [--rounds=3]

Embeds one pool (CLOTHO test shapes by default: 1,045 items, 5 captions each) with
`evaluation.Embedder` at each chunk size (rows per device call, rounded as `Embedder` does),
alternating the chunk sizes round by round, and reports the medians of the audio tower
(`items`) and the text tower (`captions`, every caption distinct).
"""

from absl import app, flags
import jax
import numpy as np

from benchmarks.common import alternate, emit, machine, synthetic_split, table
from configs import common
from jaxretrieval import replicas
from jaxretrieval.embedding import Embedder
from jaxretrieval.evaluation import eval_queries
from jaxretrieval.models import RetrievalModel, dummy_inputs
from jaxretrieval.models.spec import model_spec

_CHUNKS = flags.DEFINE_list('chunks', ['256', '512', '1024', '2048', '4096', '8192'],
                            'rows per device call')
_ITEMS = flags.DEFINE_integer('items', 1045, 'items in the pool')
_CAPTIONS = flags.DEFINE_integer('captions', 5, 'captions per item')
_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_DATASET = flags.DEFINE_enum('dataset', 'clotho', ['clotho', 'audiocaps'], 'shapes')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'timed rounds')


def main(argv):
  del argv
  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  spec = model_spec(config)
  model = RetrievalModel(spec)
  rng = np.random.default_rng(0)
  data = synthetic_split(config, spec, _ITEMS.value, rng, captions=_CAPTIONS.value)
  table_ = replicas.replicate(rng.standard_normal((1000, 300), np.float32))
  variables = replicas.replicate(jax.jit(lambda key: model.init(key, dummy_inputs(spec),
                                                                train=False))(jax.random.key(0)))
  rows, _ = eval_queries(data, _CAPTIONS.value)
  contenders = {}
  for chunk in map(int, _CHUNKS.value):
    embedder = Embedder(model, chunk)
    contenders[f'items {chunk}'] = lambda e=embedder: e.items(variables, data)
    contenders[f'captions {chunk}'] = lambda e=embedder: e.captions(variables, data, rows,
                                                                    table_)
  for fn in contenders.values():
    fn()  # compile
  times = alternate(contenders, _ROUNDS.value)
  records = []
  for chunk in map(int, _CHUNKS.value):
    records.append({'benchmark': 'eval_chunks', 'dataset_shapes': _DATASET.value,
                    'variant': _VARIANT.value, 'items': _ITEMS.value, 'chunk': chunk,
                    'embed_items_s': times[f'items {chunk}']['median_s'],
                    'embed_captions_s': times[f'captions {chunk}']['median_s'], **machine()})
    emit(records[-1])
  print(table(records, ['chunk', 'items', 'embed_items_s', 'embed_captions_s']))


if __name__ == '__main__':
  app.run(main)
