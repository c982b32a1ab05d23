"""TFDS splits -> host arrays for the model (REFERENCE §1.6, §7.11).

A split is read once from TFDS into host arrays: experts truncated to their first
`max_tokens` frames and zero-padded, availability per expert, and captions as token ids
into a shared table of distinct word vectors (`CaptionVocab`; the vectors themselves are
looked up on the device, so a batch carries `[B, T]` ints instead of `[B, T, 300]` floats).

MMT (`spec` an `MMTSpec`) reads the same splits differently: an item keeps ALL its expert
frames (the original's loader draws a subset of `max_tokens` frames per batch and max-pools
every frame), and captions become BERT WordPiece ids (`bert_tokens.BertTokens`, once per
split) in place of word-table rows. Batches are made from these arrays by `input_pipeline`.
"""

import dataclasses

from absl import logging
import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxretrieval.bert_tokens import BertTokens
from jaxretrieval.models import ModelSpec, check_availability, mmt


class CaptionVocab:
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
class SplitArrays:
  """One split in host memory. Captions of item i are rows caption_start[i]:+caption_count[i].

  For MMT, `experts[e]` is an object array `[N]` of every frame of each item (`[T_i, D_e]`),
  `lengths` their counts, and `caption_ids` BERT WordPiece ids ([CLS] ... [SEP], 0-padded).
  """
  name: str
  ids: list[str]
  audio_paths: list[str]
  experts: dict[str, np.ndarray]  # [N, T_e, D_e] (vlad) or [N, D_e] (avg); MMT: see above
  lengths: dict[str, np.ndarray]  # [N] real frames after truncation
  availability: np.ndarray  # [N, M] float32, model expert order
  caption_ids: np.ndarray  # [C, T_text] int32 rows of the word table (MMT: WordPiece ids)
  caption_lengths: np.ndarray  # [C] tokens
  caption_start: np.ndarray  # [N]
  caption_count: np.ndarray  # [N]
  captions: list[str]  # [C]

  def __len__(self) -> int:
    return len(self.ids)


def tfds_builder(config):
  """The TFDS builder of `config.tfds_name`, built first when that needs no download."""
  from jaxretrieval.data import tfds_builders  # noqa: F401  (importing registers the builders)
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


def object_array(arrays: list) -> np.ndarray:
  """A 1-D object array holding `arrays` (items' frames of different lengths)."""
  out = np.empty(len(arrays), object)
  for i, a in enumerate(arrays):
    out[i] = a
  return out


class _ItemArrays:
  """Collects items' experts (truncated, zero-padded; MMT: every frame) and availability."""

  def __init__(self, config, spec: ModelSpec | mmt.MMTSpec):
    self.spec, self.max_tokens = spec, config.max_tokens
    self.all_frames = isinstance(spec, mmt.MMTSpec)
    missing = [e.name for e in spec.experts
               if (self.all_frames or e.temporal == 'vlad') and e.name not in self.max_tokens]
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
      if self.all_frames:  # a pooled [D] expert is one frame
        x = np.asarray(experts[e.name], np.float32).reshape(-1, e.dim)
        x = x if available[e.name] else x[:0]
        n = len(x)
      else:
        x, n = (_pad(experts[e.name], self.max_tokens[e.name]) if e.temporal == 'vlad'
                else (experts[e.name], 1))
      self.feats[e.name].append(x)
      self.lengths[e.name].append(n)
    self.avail.append([float(available[e]) for e in self.spec.expert_names])

  def split_data(self, name: str, captions: dict | None = None) -> SplitArrays:
    if not self.ids:
      raise ValueError(f'split {name!r} is empty')
    availability = np.asarray(self.avail, np.float32)
    check_availability(availability, self.ids, self.spec.expert_names)
    captions = captions or {'cap_ids': np.zeros((0, self.max_tokens['text']), np.int32),
                            'cap_len': [], 'start': np.zeros(len(self.ids)),
                            'count': np.zeros(len(self.ids)), 'captions': []}
    return SplitArrays(
        name=name, ids=self.ids, audio_paths=self.paths,
        experts={e: object_array(v) if self.all_frames else np.stack(v)
                 for e, v in self.feats.items()},
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


def load_split(builder, split: str, config, spec: ModelSpec | mmt.MMTSpec,
               text: CaptionVocab | BertTokens) -> SplitArrays:
  """Reads a TFDS split into a SplitArrays for the model's experts; captions become rows of
  the word table `text` (CE, MoEE) or BERT tokens (`text` a BertTokens, MMT)."""
  check_experts(list(builder.info.features['experts'].keys()), spec.expert_names, builder.name)
  items = _ItemArrays(config, spec)
  examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  if isinstance(text, BertTokens):
    return _load_bert_captions(examples, items, split, text, config.fuse_captions)
  table, text_tokens = text, config.max_tokens['text']
  captions = {k: [] for k in ('cap_ids', 'cap_len', 'start', 'count', 'captions')}
  for example in examples:
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


def _load_bert_captions(examples, items: _ItemArrays, split: str, tokens: BertTokens,
                        fuse: bool) -> SplitArrays:
  """The split with its captions as BERT tokens, the whole split encoded in one call."""
  queries, captions = [], {'start': [], 'count': [], 'captions': []}
  for example in examples:
    items.add(example['id'].decode(), example['audio_path'].decode(), example['experts'],
              example['available'])
    texts = [c.decode() for c in example['captions']]
    words = tokens.queries(texts, fuse)
    captions['start'].append(len(queries))
    captions['count'].append(len(words))
    captions['captions'] += [' '.join(texts)] if fuse else texts
    queries += words
  ids, mask = tokens.encode(queries)
  return items.split_data(split, {**captions, 'cap_ids': ids, 'cap_len': mask.sum(1)})


def load_items(examples, config, spec: ModelSpec, name: str) -> SplitArrays:
  """A SplitArrays without captions from (id, example) pairs of ReleaseReader.audio_examples
  or TFDS examples (what an audio index needs)."""
  items = _ItemArrays(config, spec)
  for _, example in examples:
    decode = lambda v: v.decode() if isinstance(v, bytes) else v
    items.add(decode(example['id']), decode(example['audio_path']), example['experts'],
              example['available'])
  return items.split_data(name)


def check_required_experts(data: SplitArrays, experts: tuple[str, ...], flaky) -> None:
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


def subset(data: SplitArrays, fraction: float, seed: int) -> SplitArrays:
  """A seeded subset of a split's items (the training-fraction study, Fig. 1c)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'config.train_fraction={fraction}: expected 0 < fraction <= 1')
  if fraction == 1.0:
    return data
  n = max(1, int(round(fraction * len(data))))
  keep = np.sort(np.random.default_rng([seed, 1_000_003]).permutation(len(data))[:n])
  return SplitArrays(
      name=f'{data.name}[{fraction:g}]', ids=[data.ids[i] for i in keep],
      audio_paths=[data.audio_paths[i] for i in keep],
      experts={e: v[keep] for e, v in data.experts.items()},
      lengths={e: v[keep] for e, v in data.lengths.items()},
      availability=data.availability[keep], caption_ids=data.caption_ids,
      caption_lengths=data.caption_lengths, caption_start=data.caption_start[keep],
      caption_count=data.caption_count[keep], captions=data.captions)
