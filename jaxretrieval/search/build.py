"""Builds a search index: every audio item of a dataset embedded once by a trained model."""

import json
import pathlib

from absl import logging
from flax import jax_utils
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxretrieval import checkpointing
from jaxretrieval import input_pipeline
from jaxretrieval.evaluation import Embedder
from jaxretrieval.experts import model_spec
from jaxretrieval.features.experts import DIMS
from jaxretrieval.features.release_writer import folder_reader
from jaxretrieval.models import RetrievalModel
from jaxretrieval.search.store import IndexStore, contained, variable_shapes
from jaxretrieval.text import WordVectors


def load_workdir(workdir: pathlib.Path):
  """(config, spec, variables) of a workdir's best checkpoint."""
  saved = workdir / 'config.json'
  if not saved.is_file():
    raise FileNotFoundError(f'{saved} not found: pass a trained or imported workdir')
  config = ml_collections.ConfigDict(json.loads(saved.read_text()))
  spec = model_spec(config)
  _, variables = checkpointing.restore_best_model(checkpointing.manager(workdir),
                                                 variable_shapes(spec), f'indexing with {workdir}')
  return config, spec, variables


def _folder_examples(folder: pathlib.Path, split: str | None):
  if not (folder / 'audio_files.json').is_file():
    raise ValueError(f'{folder} is not a folder written by `python -m jaxretrieval.features`; '
                     'for a released dataset, build its TFDS dataset and pass its name')
  splits = sorted(p.name[:-len('_list.txt')] for p in folder.glob('*_list.txt'))
  split = split or ('all' if 'all' in splits else None)
  chosen = [split] if split else splits
  reader = folder_reader(folder, splits, DIMS)
  for s in chosen:
    yield from reader.audio_examples(s)


def _tfds_builder(name: str, data_dir: str):
  from jaxretrieval.data import tfds_builders  # pylint: disable=unused-import  (registers)
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(f'TFDS dataset {name} is not built in {builder.data_dir}')
  return builder


def _tfds_examples(builder, split: str | None):
  for s in [split] if split else list(builder.info.splits):
    for example in tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)):
      yield example['id'].decode(), example


def default_word_vectors(data: str, audio_paths: list[str]) -> pathlib.Path | None:
  """The table written with the data (release folders, SynthCaps), if there is one."""
  folders = [pathlib.Path(data)]
  for path in audio_paths[:1]:
    if path:
      folders += pathlib.Path(path).parents[:3]
  candidates = [f / name for f in folders for name in ('word_vectors.npz', 'word_vectors.pkl')]
  return next((c for c in candidates if c.is_file()), None)


def check_audio_paths(ids: list[str], audio_paths: list[str], roots: list[str]) -> None:
  """Refuses an item whose audio file (symlinks resolved) lies outside the root folders."""
  for item, path in zip(ids, audio_paths):
    if path and contained(path, roots) is None:
      raise ValueError(f'item {item}: audio file {path} resolves to {pathlib.Path(path).resolve()}'
                       f', outside the collection root(s) {roots}; if the collection really '
                       'lives there, pass --audio_root FOLDER (the folder holding its audio)')


def check_finite(ids: list[str], embeddings: np.ndarray) -> None:
  """Refuses NaN or Inf embeddings of available experts (they would poison every score),
  naming the items."""
  bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
  if len(bad):
    raise ValueError(f'{len(bad)} item(s) embed to NaN or Inf values: '
                     f'{", ".join(ids[i] for i in bad[:5])}; check their features')


def build_index(workdir: str, out: str, data: str | None = None, split: str | None = None,
                data_dir: str | None = None, word_vectors: str | None = None,
                dtype: str = 'float32', audio_roots: list[str] | None = None) -> IndexStore:
  """Embeds every item of `data` (a TFDS name or a features folder; default: the workdir's
  dataset) and writes the index to `out`.

  Only audio files inside `audio_roots` (default: the features folder, or the TFDS
  downloads folder where SynthCaps keeps its wav files) may be listed; the server will serve
  nothing else.
  """
  config, spec, variables = load_workdir(pathlib.Path(workdir))
  data = data or config.tfds_name
  if pathlib.Path(data).is_dir():
    examples = _folder_examples(pathlib.Path(data), split)
    default_root = pathlib.Path(data)
  else:
    builder = _tfds_builder(data, config.data_dir if data_dir is None else data_dir)
    examples = _tfds_examples(builder, split)
    default_root = pathlib.Path(builder.data_dir_root) / 'downloads'
  roots = [str(pathlib.Path(r).resolve()) for r in audio_roots or [default_root]]
  items = input_pipeline.load_items(examples, config, spec, data)
  if len(set(items.ids)) != len(items.ids):
    raise ValueError(f'{data} repeats item ids across splits; index one split (--split)')
  check_audio_paths(items.ids, items.audio_paths, roots)
  embedder = Embedder(RetrievalModel(spec), max(1, config.eval_chunk // jax.local_device_count()))
  audio = embedder.items(jax_utils.replicate(variables), items)
  embeddings = np.concatenate([np.where(items.availability[:, i:i + 1] > 0, audio[e], 0.0)
                               for i, e in enumerate(spec.expert_names)], axis=1)
  check_finite(items.ids, embeddings)
  vectors = word_vectors or default_word_vectors(data, items.audio_paths)
  if vectors is None:
    raise FileNotFoundError(
        f'no word vectors found for {data}: pass --word_vectors (the reference used word2vec '
        'GoogleNews-vectors-negative300.bin; SynthCaps and features folders carry their own)')
  store = IndexStore(spec=spec, text_tokens=int(config.max_tokens['text']),
                     embeddings=embeddings.astype(dtype), availability=items.availability,
                     ids=items.ids, audio_paths=items.audio_paths, variables=variables,
                     words=WordVectors.load(vectors), audio_roots=roots,
                     provenance={'workdir': str(pathlib.Path(workdir).absolute()), 'data': data,
                                 'split': split or 'all', 'word_vectors': str(vectors)})
  store.save(out)
  logging.info('Indexed %d items of %s into %s', len(store), data, out)
  return store
