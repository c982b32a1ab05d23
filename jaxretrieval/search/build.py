"""Builds a search index: every audio item of a dataset embedded once by a trained model."""

import json
import pathlib

from absl import logging
from flax import jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxretrieval import checkpointing
from jaxretrieval import input_pipeline
from jaxretrieval.data.registry import computed_release
from jaxretrieval.data.releases import ReleaseReader
from jaxretrieval.evaluation import Embedder
from jaxretrieval.experts import model_spec
from jaxretrieval.features.experts import DIMS
from jaxretrieval.models import RetrievalModel
from jaxretrieval.search.store import IndexStore
from jaxretrieval.text import WordVectors


def load_workdir(workdir: pathlib.Path):
  """(config, spec, variables) of a workdir's best checkpoint."""
  saved = workdir / 'config.json'
  if not saved.is_file():
    raise FileNotFoundError(f'{saved} not found: pass a trained or imported workdir')
  config = ml_collections.ConfigDict(json.loads(saved.read_text()))
  spec = model_spec(config)
  model = RetrievalModel(spec)
  sample = {'experts': {e.name: jnp.zeros((1, 2, e.dim) if e.temporal == 'vlad' else (1, e.dim))
                        for e in spec.experts},
            'availability': jnp.ones((1, len(spec.experts))), 'text': jnp.zeros((1, 2, 300))}
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
  _, variables = checkpointing.restore_best_model(checkpointing.manager(workdir), target,
                                                 f'indexing with {workdir}')
  return config, spec, variables


def _folder_examples(folder: pathlib.Path, split: str | None):
  if not (folder / 'audio_files.json').is_file():
    raise ValueError(f'{folder} is not a folder written by `python -m jaxretrieval.features`; '
                     'for a released dataset, build its TFDS dataset and pass its name')
  splits = sorted(p.name[:-len('_list.txt')] for p in folder.glob('*_list.txt'))
  split = split or ('all' if 'all' in splits else None)
  chosen = [split] if split else splits
  reader = ReleaseReader('custom', folder, computed_release('custom', splits, DIMS))
  for s in chosen:
    yield from reader.audio_examples(s)


def _tfds_examples(name: str, data_dir: str, split: str | None):
  from jaxretrieval.data import tfds_builders  # pylint: disable=unused-import  (registers)
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(f'TFDS dataset {name} is not built in {builder.data_dir}')
  for s in [split] if split else list(builder.info.splits):
    for example in tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)):
      yield example['id'].decode(), example


def default_word_vectors(data: str, audio_paths: list[str]) -> pathlib.Path | None:
  """The table written with the data (release folders, SynthCaps), if there is one."""
  candidates = [pathlib.Path(data) / 'word_vectors.pkl']
  for path in audio_paths[:1]:
    if path:
      candidates += [p / 'word_vectors.pkl' for p in pathlib.Path(path).parents[:3]]
  return next((c for c in candidates if c.is_file()), None)


def build_index(workdir: str, out: str, data: str | None = None, split: str | None = None,
                data_dir: str | None = None, word_vectors: str | None = None,
                dtype: str = 'float32') -> IndexStore:
  """Embeds every item of `data` (a TFDS name or a features folder; default: the workdir's
  dataset) and writes the index to `out`."""
  config, spec, variables = load_workdir(pathlib.Path(workdir))
  data = data or config.tfds_name
  if pathlib.Path(data).is_dir():
    examples = _folder_examples(pathlib.Path(data), split)
  else:
    examples = _tfds_examples(data, config.data_dir if data_dir is None else data_dir, split)
  items = input_pipeline.load_items(examples, config, spec, data)
  if len(set(items.ids)) != len(items.ids):
    raise ValueError(f'{data} repeats item ids across splits; index one split (--split)')
  embedder = Embedder(RetrievalModel(spec), max(1, config.eval_chunk // jax.local_device_count()))
  audio = embedder.items(jax_utils.replicate(variables), items)
  embeddings = np.concatenate([audio[e] * items.availability[:, i:i + 1]
                               for i, e in enumerate(spec.expert_names)], axis=1)
  vectors = word_vectors or default_word_vectors(data, items.audio_paths)
  if vectors is None:
    raise FileNotFoundError(
        f'no word vectors found for {data}: pass --word_vectors (the reference used word2vec '
        'GoogleNews-vectors-negative300.bin; SynthCaps and features folders carry their own)')
  store = IndexStore(spec=spec, text_tokens=int(config.max_tokens['text']),
                     embeddings=embeddings.astype(dtype), availability=items.availability,
                     ids=items.ids, audio_paths=items.audio_paths, variables=variables,
                     words=WordVectors.load(vectors),
                     provenance={'workdir': str(pathlib.Path(workdir).absolute()), 'data': data,
                                 'split': split or 'all', 'word_vectors': str(vectors)})
  store.save(out)
  logging.info('Indexed %d items of %s into %s', len(store), data, out)
  return store
