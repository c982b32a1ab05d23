"""TFDS splits -> fixed-shape, per-device batches (REFERENCE §1.6, §7.11).

A split is read once from TFDS into host arrays: experts truncated to their first
`max_tokens` frames and zero-padded, availability per expert, and captions as token ids
into a shared table of distinct word vectors (the vectors themselves are looked up on the
device, so a batch carries `[B, T]` ints instead of `[B, T, 300]` floats). Every epoch
draws a seeded permutation and one random caption per item; the last, partial batch is
padded and masked so the loss and BatchNorm see only its real items. Every host builds the
same global batch and keeps its own slice, so a multi-host run sees exactly the batches of
a single-host one.
"""

import dataclasses
import math
from collections.abc import Iterator

from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxretrieval.models import ModelSpec, check_availability


class WordTable:
  """Distinct word vectors seen in the captions; row 0 is the zero padding vector."""

  def __init__(self, dim: int = 300):
    self.dim = dim
    self._rows: dict[bytes, int] = {}
    self._vectors: list[np.ndarray] = [np.zeros(dim, np.float32)]

  def ids(self, vectors: np.ndarray) -> np.ndarray:
    """Row ids of `[tokens, dim]` vectors, adding new ones."""
    out = np.empty(len(vectors), np.int32)
    for i, v in enumerate(np.ascontiguousarray(vectors, np.float32)):
      key = v.tobytes()
      if key not in self._rows:
        self._rows[key] = len(self._vectors)
        self._vectors.append(v)
      out[i] = self._rows[key]
    return out

  @property
  def matrix(self) -> np.ndarray:
    return np.stack(self._vectors)  # [V, dim]


@dataclasses.dataclass
class SplitData:
  """One split in host memory. Captions of item i are rows caption_start[i]:+caption_count[i]."""
  name: str
  ids: list[str]
  audio_paths: list[str]
  experts: dict[str, np.ndarray]  # [N, T_e, D_e] (vlad) or [N, D_e] (avg)
  lengths: dict[str, np.ndarray]  # [N] real frames after truncation
  availability: np.ndarray  # [N, M] float32, model expert order
  caption_ids: np.ndarray  # [C, T_text] int32 rows of the word table
  caption_lengths: np.ndarray  # [C]
  caption_start: np.ndarray  # [N]
  caption_count: np.ndarray  # [N]
  captions: list[str]  # [C]

  def __len__(self) -> int:
    return len(self.ids)


def tfds_builder(config):
  """The TFDS builder of `config.tfds_name`, built first when that needs no download."""
  from jaxretrieval.data import tfds_builders  # pylint: disable=unused-import  (registers)
  builder = tfds.builder(config.tfds_name, data_dir=config.data_dir or None)
  if not builder.is_prepared():
    if config.tfds_name.startswith('synthcaps') or config.manual_dir:
      if jax.process_index() == 0:
        logging.info('Building %s in %s', config.tfds_name, builder.data_dir)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=config.manual_dir or None))
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices('tfds_build')
      builder = tfds.builder(config.tfds_name, data_dir=config.data_dir or None)
    else:
      name = config.tfds_name.split('/')[0]
      raise FileNotFoundError(
          f'TFDS dataset {config.tfds_name} is not built in {builder.data_dir}. Build it with '
          f'`tfds build data_builders/{name} --manual_dir=DIR` (DIR holding the released '
          f'archive; see README), or pass --config.manual_dir=DIR to build it here.')
  return builder


def _pad(array: np.ndarray, length: int) -> tuple[np.ndarray, int]:
  """First `length` rows of `[T, D]`, zero-padded: (`[length, D]`, real rows)."""
  n = min(len(array), length)
  out = np.zeros((length, array.shape[1]), np.float32)
  out[:n] = array[:n]
  return out, n


class _ItemArrays:
  """Collects items' experts (truncated, zero-padded) and availability."""

  def __init__(self, config, spec: ModelSpec):
    self.spec, self.max_tokens = spec, config.max_tokens
    missing = [e.name for e in spec.experts if e.temporal == 'vlad' and e.name not in
               self.max_tokens]
    if missing or 'text' not in self.max_tokens:
      raise ValueError(f'config.max_tokens lacks {missing or ["text"]}: set the token limit of '
                       'every temporal expert and of the text')
    self.ids, self.paths, self.avail = [], [], []
    self.feats = {e: [] for e in spec.expert_names}
    self.lengths = {e: [] for e in spec.expert_names}

  def add(self, item: str, audio_path: str, experts: dict, available: dict) -> None:
    self.ids.append(item)
    self.paths.append(audio_path)
    for e in self.spec.experts:
      x, n = (_pad(experts[e.name], self.max_tokens[e.name]) if e.temporal == 'vlad'
              else (experts[e.name], 1))
      self.feats[e.name].append(x)
      self.lengths[e.name].append(n)
    self.avail.append([float(available[e]) for e in self.spec.expert_names])

  def split_data(self, name: str, captions: dict | None = None) -> SplitData:
    if not self.ids:
      raise ValueError(f'split {name!r} is empty')
    availability = np.asarray(self.avail, np.float32)
    check_availability(availability, self.ids, self.spec.expert_names)
    captions = captions or {'cap_ids': np.zeros((0, self.max_tokens['text']), np.int32),
                            'cap_len': [], 'start': np.zeros(len(self.ids)),
                            'count': np.zeros(len(self.ids)), 'captions': []}
    return SplitData(
        name=name, ids=self.ids, audio_paths=self.paths,
        experts={e: np.stack(v) for e, v in self.feats.items()},
        lengths={e: np.asarray(v, np.int32) for e, v in self.lengths.items()},
        availability=availability,
        caption_ids=np.asarray(captions['cap_ids'], np.int32).reshape(
            -1, self.max_tokens['text']),
        caption_lengths=np.asarray(captions['cap_len'], np.int32),
        caption_start=np.asarray(captions['start'], np.int64),
        caption_count=np.asarray(captions['count'], np.int64), captions=captions['captions'])


def check_experts(available: list[str], experts: tuple[str, ...], source: str) -> None:
  for e in experts:
    if e not in available:
      raise ValueError(f'config.experts names {e!r}, which {source} does not have; its '
                       f'experts are {sorted(available)}')


def load_split(builder, split: str, config, spec: ModelSpec, table: WordTable) -> SplitData:
  """Reads a TFDS split into a SplitData for the model's experts."""
  check_experts(list(builder.info.features['experts'].keys()), spec.expert_names, builder.name)
  items = _ItemArrays(config, spec)
  text_tokens = config.max_tokens['text']
  captions = {k: [] for k in ('cap_ids', 'cap_len', 'start', 'count', 'captions')}
  for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    items.add(example['id'].decode(), example['audio_path'].decode(), example['experts'],
              example['available'])
    vectors = np.split(example['caption_vectors'], np.cumsum(example['caption_lengths'])[:-1])
    texts = [c.decode() for c in example['captions']]
    if config.fuse_captions:  # one long query of all captions, then truncated
      vectors, texts = [np.concatenate(vectors)], [' '.join(texts)]
    captions['start'].append(len(captions['cap_ids']))
    captions['count'].append(len(vectors))
    for v, text in zip(vectors, texts):
      v, n = _pad(v, text_tokens)
      captions['cap_ids'].append(np.pad(table.ids(v[:n]), (0, text_tokens - n)))
      captions['cap_len'].append(n)
      captions['captions'].append(text)
  return items.split_data(split, captions)


def load_items(examples, config, spec: ModelSpec, name: str) -> SplitData:
  """A SplitData without captions from (id, example) pairs of ReleaseReader.audio_examples
  or TFDS examples (what an audio index needs)."""
  items = _ItemArrays(config, spec)
  for _, example in examples:
    decode = lambda v: v.decode() if isinstance(v, bytes) else v
    items.add(decode(example['id']), decode(example['audio_path']), example['experts'],
              example['available'])
  return items.split_data(name)


def check_required_experts(data: SplitData, experts: tuple[str, ...], flaky) -> None:
  """Training items must have every non-flaky expert (REFERENCE §1.6)."""
  for i, e in enumerate(experts):
    if e in flaky:
      continue
    absent = np.flatnonzero(data.availability[:, i] == 0)
    if absent.size:
      shown = ', '.join(data.ids[j] for j in absent[:10])
      raise ValueError(f'{absent.size} {data.name} item(s) lack the expert {e}, which is not '
                       f'flaky (config.flaky={list(flaky)}): {shown}. Add {e} to config.flaky '
                       'or remove these items.')


def subset(data: SplitData, fraction: float, seed: int) -> SplitData:
  """A seeded subset of a split's items (the training-fraction study, Fig. 1c)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'config.train_fraction={fraction}: expected 0 < fraction <= 1')
  if fraction == 1.0:
    return data
  n = max(1, int(round(fraction * len(data))))
  keep = np.sort(np.random.default_rng([seed, 1_000_003]).permutation(len(data))[:n])
  return SplitData(
      name=f'{data.name}[{fraction:g}]', ids=[data.ids[i] for i in keep],
      audio_paths=[data.audio_paths[i] for i in keep],
      experts={e: v[keep] for e, v in data.experts.items()},
      lengths={e: v[keep] for e, v in data.lengths.items()},
      availability=data.availability[keep], caption_ids=data.caption_ids,
      caption_lengths=data.caption_lengths, caption_start=data.caption_start[keep],
      caption_count=data.caption_count[keep], captions=data.captions)


def steps_per_epoch(data: SplitData, batch_size: int) -> int:
  """Batches per epoch. A last batch of a single item is left out (its BatchNorm variance
  would divide by zero; the reference crashes there), and `train_batches` logs it."""
  steps = math.ceil(len(data) / batch_size)
  return steps - 1 if len(data) % batch_size == 1 and len(data) > 1 else steps


def arrays(data: SplitData) -> dict:
  """The arrays a training batch is gathered from (kept on the device with data_on_device)."""
  return {'experts': data.experts, 'expert_lengths': data.lengths,
          'availability': data.availability, 'caption_ids': data.caption_ids,
          'caption_lengths': data.caption_lengths}


def gather(source: dict, index: dict, xp=np) -> dict:
  """A batch from `arrays(data)` and an index batch; `xp` is numpy, or jax.numpy on device."""
  items, captions = index['items'], index['captions']
  return {
      'experts': {e: xp.take(v, items, axis=0) for e, v in source['experts'].items()},
      'expert_lengths': {e: xp.take(v, items, axis=0)
                         for e, v in source['expert_lengths'].items()},
      'availability': xp.take(source['availability'], items, axis=0),
      'text_ids': xp.take(source['caption_ids'], captions, axis=0),
      'text_lengths': xp.take(source['caption_lengths'], captions, axis=0),
      'row_mask': index['row_mask'],
  }


def index_batches(data: SplitData, epoch: int, seed: int, batch_size: int,
                  num_hosts: int = 1, host: int = 0) -> Iterator[dict]:
  """This host's slice of every global batch of an epoch: item and caption rows, mask."""
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(data))
  picks = data.caption_start + (rng.random(len(data)) * data.caption_count).astype(np.int64)
  per_host = batch_size // num_hosts
  steps = steps_per_epoch(data, batch_size)
  if steps * batch_size < len(data):
    logging.warning('epoch %d leaves out item %s: %d items leave a last batch of one',
                    epoch, data.ids[order[-1]], len(data))
  for step in range(steps):
    items = order[step * batch_size:(step + 1) * batch_size]
    valid = np.ones(batch_size, np.float32)
    valid[len(items):] = 0.0
    items = np.concatenate([items, np.full(batch_size - len(items), items[0])])
    mine = items[host * per_host:(host + 1) * per_host]
    yield {'items': mine.astype(np.int32), 'captions': picks[mine].astype(np.int32),
           'row_mask': valid[host * per_host:(host + 1) * per_host]}


def train_batches(data: SplitData, epoch: int, seed: int, batch_size: int,
                  num_hosts: int = 1, host: int = 0) -> Iterator[dict]:
  """This host's slice of every global batch of an epoch, gathered on the host."""
  source = arrays(data)
  for index in index_batches(data, epoch, seed, batch_size, num_hosts, host):
    yield gather(source, index)


def shard(batch: dict, devices: int) -> dict:
  """[B, ...] -> [devices, B / devices, ...] on every leaf."""
  return jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)


def eval_queries(data: SplitData, num_captions: int) -> tuple[np.ndarray, np.ndarray]:
  """Caption rows of the first `num_captions` captions of every item (item-major), and the
  query masks `[N, K]`; absent captions reuse the item's first caption, masked out."""
  k = np.arange(num_captions)[None, :]
  masks = k < data.caption_count[:, None]  # [N, K]
  rows = data.caption_start[:, None] + np.where(masks, k, 0)
  return rows.reshape(-1), masks.astype(np.float32)
