"""Builds a search index (every audio item of a dataset embedded once by a trained model),
and grows or shrinks one: `add_to_index` embeds only the new items into a new shard,
`remove_from_index` rewrites only the shards that lose items; both then swap the manifest
atomically (`store.commit`)."""

import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import time

from absl import logging
import jax
import ml_collections
import numpy as np
import soundfile
import tensorflow_datasets as tfds

from jaxretrieval import checkpointing, replicas
from jaxretrieval.data import splits
from jaxretrieval.embedding import Embedder
from jaxretrieval.features.handcrafted import DIMS
from jaxretrieval.features.release_writer import folder_reader
from jaxretrieval.models import RetrievalModel, abstract_variables
from jaxretrieval.models.spec import model_spec
from jaxretrieval.search import thumbnails
from jaxretrieval.search.store import (
  IndexStore,
  ThumbnailPack,
  changing,
  commit,
  contained,
  new_shard_prefix,
  write_index,
  write_shard,
)
from jaxretrieval.text import WordVectors


def load_config(workdir: pathlib.Path):
  """(config, spec) of a workdir."""
  saved = workdir / 'config.json'
  if not saved.is_file():
    raise FileNotFoundError(f'{saved} not found: pass a trained or imported workdir')
  config = ml_collections.ConfigDict(json.loads(saved.read_text()))
  return config, model_spec(config)


def load_workdir(workdir: pathlib.Path):
  """(config, spec, variables) of a workdir's best checkpoint."""
  config, spec = load_config(workdir)
  _, variables = checkpointing.restore_best_model(checkpointing.manager(workdir),
                                                 abstract_variables(spec), f'indexing with {workdir}')
  return config, spec, variables


def _folder_examples(folder: pathlib.Path, split: str | None):
  """(examples with their captions where the folder has them, number of items)."""
  if not (folder / 'audio_files.json').is_file():
    raise ValueError(f'{folder} is not a folder written by `python -m jaxretrieval.features`; '
                     'for a released dataset, build its TFDS dataset and pass its name')
  splits = sorted(p.name[:-len('_list.txt')] for p in folder.glob('*_list.txt'))
  split = split or ('all' if 'all' in splits else None)
  chosen = [split] if split else splits
  reader = folder_reader(folder, splits, DIMS)

  def examples():
    for s in chosen:
      for item, example in reader.audio_examples(s):
        example['captions'] = reader.item_captions(item)
        yield item, example
  return examples(), sum(len(reader.split_ids(s)) for s in chosen)


def _tfds_builder(name: str, data_dir: str):
  from jaxretrieval.data import tfds_builders  # noqa: F401  (importing registers the builders)
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(f'TFDS dataset {name} is not built in {builder.data_dir}')
  return builder


def _tfds_examples(builder, split: str | None):
  """(examples, number of items)."""
  chosen = [split] if split else list(builder.info.splits)

  def examples():
    for s in chosen:
      for example in tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)):
        yield example['id'].decode(), example
  return examples(), sum(builder.info.splits[s].num_examples for s in chosen)


def progress(iterable, total: int, what: str, every_s: float = 10.0):
  """Yields from `iterable`, logging `what`: done/total items, items/s and ETA every
  `every_s` seconds and once at the end (a million items take tens of minutes)."""
  start = last = time.monotonic()
  done = reported = 0

  def report():
    elapsed = max(time.monotonic() - start, 1e-9)
    eta = f', ETA {(total - done) * elapsed / done:.0f} s' if done < total else ''
    logging.info('%s: %d/%d items, %.1f items/s%s', what, done, total, done / elapsed, eta)
    return done
  for x in iterable:
    yield x
    done += 1
    if time.monotonic() - last >= every_s:
      last, reported = time.monotonic(), report()
  if reported != done or not done:
    report()


def default_word_vectors(data: str, audio_paths: list[str]) -> pathlib.Path | None:
  """The table written with the data (SynthCaps; features folders made with --captions),
  if there is one."""
  folders = [pathlib.Path(data)]
  for path in audio_paths[:1]:
    if path:
      folders += pathlib.Path(path).parents[:3]
  candidates = [f / name for f in folders for name in ('word_vectors.npz', 'word_vectors.pkl')]
  return next((c for c in candidates if c.is_file()), None)


def no_word_vectors(data: str) -> FileNotFoundError:
  """The error for data without a word-vector table of its own, saying what to pass."""
  if pathlib.Path(data).is_dir():
    return FileNotFoundError(
        f'{data} has no word_vectors.npz of its own (features folders carry one only when '
        'made with --captions): pass --word_vectors, the table the model was trained with: '
        'for the released models word2vec GoogleNews-vectors-negative300.bin, for a SynthCaps '
        'model the word_vectors.npz in its TFDS downloads folder')
  return FileNotFoundError(
      f'no word vectors found for {data}: pass --word_vectors (the released datasets use '
      'word2vec GoogleNews-vectors-negative300.bin, the table the reference trained with)')


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


def duration(path: str) -> float | None:
  """Seconds of audio in `path`, None when there is no readable audio file."""
  if not path or not pathlib.Path(path).is_file():
    return None
  try:
    return round(float(soundfile.info(path).duration), 3)
  except (RuntimeError, OSError):  # soundfile.LibsndfileError: a format it cannot read
    return None


def audio_file_summary(path: str) -> tuple[float | None, bytes]:
  """(duration, PNG thumbnail) of an item's audio file; (None, b'') without a readable one."""
  seconds = duration(path)
  return seconds, thumbnails.render(path) if seconds is not None else b''


SHARD_ITEMS = 100_000  # items embedded, held and written at a time: one shard's worth


@dataclasses.dataclass
class Embedded:
  """Items of a data source embedded by the audio tower, with what a result page shows."""
  ids: list[str]
  audio_paths: list[str]
  captions: list[list[str]]
  durations: list[float | None]
  embeddings: np.ndarray  # [N, sum d_e], zero blocks for missing experts
  availability: np.ndarray  # [N, M]
  thumbnails: ThumbnailPack | None  # None when no item has a readable audio file

  def shard(self, dtype) -> tuple[np.ndarray, np.ndarray, dict, ThumbnailPack | None]:
    """(embeddings as `dtype`, availability, items.json content, thumbnails): what
    `write_shard` takes."""
    return (self.embeddings.astype(dtype), self.availability,
            {'ids': self.ids, 'audio_paths': self.audio_paths, 'captions': self.captions,
             'durations': self.durations}, self.thumbnails)


def _source(data: str, split: str | None, data_dir: str | None, config):
  """(examples, number of items, default audio root) of a TFDS name or a features folder."""
  if pathlib.Path(data).is_dir():
    return *_folder_examples(pathlib.Path(data), split), pathlib.Path(data)
  builder = _tfds_builder(data, config.data_dir if data_dir is None else data_dir)
  return *_tfds_examples(builder, split), pathlib.Path(builder.data_dir_root) / 'downloads'


def embed_source(config, spec, variables, data: str, split: str | None, data_dir: str | None,
                 audio_roots: list[str] | None, known_roots: tuple[str, ...] = (),
                 batch_items: int = SHARD_ITEMS):
  """(audio roots, batches) of `data`: audio must lie inside the roots (`audio_roots`,
  default: the data's folder, and `known_roots`); `batches` yields `Embedded` batches of up
  to `batch_items` items, each read, embedded and drawn only when reached, so memory holds
  one batch however large the collection."""
  examples, total, default_root = _source(data, split, data_dir, config)
  roots = list(known_roots) + [str(pathlib.Path(r).resolve()) for r in
                               audio_roots or [default_root]]
  roots = list(dict.fromkeys(roots))
  return roots, _embedded_batches(config, spec, variables, examples, total, data, roots,
                                   batch_items)


def _embedded_batches(config, spec, variables, examples, total: int, data: str,
                      roots: list[str], batch_items: int):
  embedder = Embedder(RetrievalModel(spec), max(1, config.eval_chunk // jax.local_device_count()))
  replicated = replicas.replicate(variables)
  examples = iter(progress(examples, total, f'Reading the features of {data}'))
  seen, unread, done = set(), 0, 0
  while batch := list(itertools.islice(examples, batch_items)):
    captions = {item: [c.decode() if isinstance(c, bytes) else str(c)
                       for c in example.get('captions', [])] for item, example in batch}
    items = splits.load_items(batch, config, spec, data)
    if len(set(items.ids)) != len(items.ids) or not seen.isdisjoint(items.ids):
      raise ValueError(f'{data} repeats item ids across splits; index one split (--split)')
    seen.update(items.ids)
    check_audio_paths(items.ids, items.audio_paths, roots)
    start = time.monotonic()
    audio = embedder.items(replicated, items)
    seconds = time.monotonic() - start
    logging.info('Embedded %d items in %.1f s (%.1f items/s)', len(items.ids), seconds,
                 len(items.ids) / max(seconds, 1e-9))
    embeddings = np.concatenate([np.where(items.availability[:, i:i + 1] > 0, audio[e], 0.0)
                                 for i, e in enumerate(spec.expert_names)], axis=1)
    check_finite(items.ids, embeddings)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # libsndfile, NumPy
      # and zlib release the GIL
      summaries = list(progress(pool.map(audio_file_summary, items.audio_paths),
                                len(items.ids), 'Reading durations and drawing thumbnails'))
    durations, pictures = [d for d, _ in summaries], [p for _, p in summaries]
    unread += sum(d is None for d, p in zip(durations, items.audio_paths) if p)
    done += len(items.ids)
    yield Embedded(items.ids, items.audio_paths, [captions.get(i, []) for i in items.ids],
                   durations, embeddings, items.availability,
                   ThumbnailPack.of(pictures) if any(pictures) else None)
  if unread:
    logging.warning('%d of %d audio files of %s could not be read: their duration is not '
                    'shown', unread, done, data)


def build_index(workdir: str, out: str, data: str | None = None, split: str | None = None,
                data_dir: str | None = None, word_vectors: str | None = None,
                dtype: str = 'float32', audio_roots: list[str] | None = None,
                shard_items: int = SHARD_ITEMS) -> int:
  """Embeds every item of `data` (a TFDS name or a features folder; default: the workdir's
  dataset) and writes the index to `out`, `shard_items` items at a time (one shard each,
  embeddings stored as `dtype`), so that memory holds one shard however large the collection;
  returns the number of items (`IndexStore.load(out)` reads the index).

  Only audio files inside `audio_roots` (default: the features folder, or the TFDS
  downloads folder where SynthCaps keeps its wav files) may be listed; the server will serve
  nothing else.
  """
  config, spec, variables = load_workdir(pathlib.Path(workdir))
  data = data or config.tfds_name
  roots, batches = embed_source(config, spec, variables, data, split, data_dir, audio_roots,
                                batch_items=shard_items)
  first = next(batches, None)
  if first is None:
    raise ValueError(f'{data} has no items to index (split {split or "all"})')
  vectors = word_vectors or default_word_vectors(data, first.audio_paths)
  if vectors is None:
    raise no_word_vectors(data)
  header = IndexStore(spec=spec, text_tokens=int(config.max_tokens['text']),
                      embeddings=np.zeros((0, sum(spec.embed_dims())), dtype),
                      availability=np.zeros((0, len(spec.experts)), np.float32), ids=[],
                      audio_paths=[], variables=variables, words=WordVectors.load(vectors),
                      audio_roots=roots,
                      provenance={'workdir': str(pathlib.Path(workdir).absolute()), 'data': data,
                                  'split': split or 'all', 'word_vectors': str(vectors)},
                      max_tokens={k: int(v) for k, v in config.max_tokens.items()})
  n = write_index(out, header, (b.shard(dtype) for b in itertools.chain([first], batches)))
  logging.info('Indexed %d items of %s into %s', n, data, out)
  return n


def add_to_index(index: str, data: str, workdir: str | None = None, split: str | None = None,
                 data_dir: str | None = None, audio_roots: list[str] | None = None) -> int:
  """Embeds the items of `data` with the index's own model and appends them as new shards
  (`SHARD_ITEMS` items each); returns their number. The workdir (default: the one the index was built from) gives only
  the input settings (token limits); the weights are the index's."""
  with changing(pathlib.Path(index)):
    return _add(pathlib.Path(index), data, workdir, split, data_dir, audio_roots)


def _add(directory, data, workdir, split, data_dir, audio_roots) -> int:
  store = IndexStore.load(directory)
  workdir = workdir or store.provenance.get('workdir')
  if not workdir:
    raise ValueError(f'{directory / "meta.json"} records no workdir: pass --workdir')
  config, spec = load_config(pathlib.Path(workdir))
  if spec != store.spec:
    raise ValueError(f'the model of {workdir} is not the one of the index {directory}: pass '
                     'the --workdir the index was built from')
  roots, batches = embed_source(config, spec, store.variables, data, split, data_dir,
                                audio_roots, tuple(store.audio_roots))
  added, present = [], set(store.ids)
  for batch in batches:
    repeated = sorted(present.intersection(batch.ids))
    if repeated:
      raise ValueError(f'{len(repeated)} item(s) of {data} are already in {directory}: '
                       f'{", ".join(repeated[:5])}; remove them first (--remove) to re-embed '
                       'them')
    added.append(write_shard(directory, new_shard_prefix(), *batch.shard(store.embeddings.dtype)))
  n = sum(s['items'] for s in added)
  store.audio_roots = roots
  store.provenance.setdefault('added', []).append({'data': data, 'split': split or 'all',
                                                   'items': n})
  commit(directory, store.manifest(store.shards + added))
  logging.info('Added %d items of %s to %s (%d in all)', n, data, directory, len(store) + n)
  return n


def remove_from_index(index: str, ids: list[str]) -> int:
  """Removes the items `ids` (all must be in the index); returns the number left. Only the
  shards holding them are rewritten."""
  with changing(pathlib.Path(index)):
    return _remove(pathlib.Path(index), ids)


def _remove(directory: pathlib.Path, ids: list[str]) -> int:
  store = IndexStore.load(directory)
  drop = set(ids)
  unknown = sorted(drop - set(store.ids))
  if unknown:
    raise ValueError(f'{len(unknown)} id(s) are not in {directory}: {", ".join(unknown[:5])}; '
                     'nothing was removed')
  if len(drop) == len(store):
    raise ValueError(f'removing all {len(store)} items would leave {directory} empty; delete '
                     'the folder instead')
  shards, start = [], 0
  for shard in store.shards:
    rows = range(start, start + shard['items'])
    start += shard['items']
    keep = [r for r in rows if store.ids[r] not in drop]
    if len(keep) == len(rows):
      shards.append(shard)
    elif keep:
      pictures = [store.thumbnail(r) for r in keep]
      shards.append(write_shard(directory, new_shard_prefix(), np.asarray(store.embeddings[keep]),
                                store.availability[keep], store.items(keep),
                                ThumbnailPack.of(pictures) if any(pictures) else None))
  commit(directory, store.manifest(shards))
  logging.info('Removed %d items from %s (%d left)', len(drop), directory,
               len(store) - len(drop))
  return len(store) - len(drop)
