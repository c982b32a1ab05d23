"""Reading a release: locating and unpacking the archive, and a validating reader (REFERENCE §1).

An archive `<NAME>-experts-audio-only.tar.gz` unpacks to `data/<folder>/structured-symlinks/`
holding split lists, the raw captions, the word vectors of the captions (`w2v.pkl`) and one
file per expert (where, per dataset: `registry.DATASETS[name].release`). `ReleaseReader`
turns that folder into per-item examples, checking every item so that bad data fails with
the dataset, file and item id named.

Gaps are read on as the reference reads on (REFERENCE §1.2, §1.6): an item without an
entry in an expert's file (absent, NaN, all-NaN or zero frames) is recorded as unavailable
for that expert and counted, whether the expert is flaky or not; whether a training run
may use such an item is decided at run time for the experts its config uses
(`splits.check_required_experts`). What the reference cannot use either stops the
build: an id listed twice or in two splits, an id without captions or word vectors.
"""

import collections
from collections.abc import Collection, Iterator
import itertools
import json
import pathlib
import shutil
import tarfile
import time
from typing import Any

from absl import logging
import numpy as np

from jaxretrieval.data.registry import DATASETS, WORD_DIM, Expert, Release
from jaxretrieval.data.release_files import (
  ReleaseFileError,
  UnexpectedPickleContent,
  caption_text,
  find_shards,
  is_missing,
  load_feature_file,
  load_shards,
  read_split_list,
)


def find_root(release: Release, directory: pathlib.Path) -> pathlib.Path | None:
  """The structured-symlinks folder of an extracted archive under `directory`, if any."""
  candidates = [directory / 'data' / release.folder / 'structured-symlinks',
                directory / release.folder / 'structured-symlinks',
                directory / 'structured-symlinks', directory]
  for candidate in candidates:
    if (candidate / release.splits[next(iter(release.splits))]).is_file():
      return candidate
  return None


def extract_archive(archive: pathlib.Path, destination: pathlib.Path,
                    log_every_s: float = 30.0) -> None:
  """Unpacks a release archive, refusing members that would land outside `destination`.

  Logs progress (share of the archive read, MB/s, ETA) every `log_every_s` seconds: the
  large archives take minutes.
  """
  destination.mkdir(parents=True, exist_ok=True)
  total = max(archive.stat().st_size, 1)
  start = last = time.monotonic()
  try:
    with open(archive, 'rb') as raw, tarfile.open(fileobj=raw) as tar:
      for member in tar:
        tar.extract(member, destination, filter='data')
        now = time.monotonic()
        if now - last >= log_every_s:
          last, done = now, raw.tell()
          rate = done / max(now - start, 1e-9)
          logging.info('Unpacking %s: %.0f%% (%.1f MB/s, ETA %.0f s)', archive.name,
                       100 * done / total, rate / 1e6, (total - done) / max(rate, 1e-9))
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ReleaseFileError(f'{archive}: cannot unpack ({e}); is the download complete?') from e


def unpack_archive(archive: pathlib.Path, destination: pathlib.Path) -> None:
  """Unpacks `archive` into `destination` unless it holds this very archive's contents.

  The copy is keyed to the archive's size and modification time (stamp file `.unpacked`),
  so a replaced archive - e.g. a complete download after a truncated one - is unpacked
  afresh, and an interrupted unpacking (no stamp) is redone from an empty folder.
  """
  stat = archive.stat()
  key = json.dumps({'archive': archive.name, 'size': stat.st_size,
                    'mtime_ns': stat.st_mtime_ns})
  stamp = destination / '.unpacked'
  if stamp.is_file() and stamp.read_text() == key:
    return
  if destination.exists():
    logging.info('%s was unpacked from another copy of %s (or not completely); unpacking '
                 'again', destination, archive)
    shutil.rmtree(destination)
  logging.info('Unpacking %s (%.1f MB) into %s', archive, stat.st_size / 1e6, destination)
  extract_archive(archive, destination)
  stamp.write_text(key)


class ReleaseReader:
  """Reads a release folder (structured-symlinks) item by item, validating everything."""

  def __init__(self, dataset: str, root: pathlib.Path, release: Release | None = None,
               flaky: Collection[str] = ()):
    """Reads `root` as the release of registered `dataset` (its layout and flaky experts),
    or, given `release`, as that layout with the experts `flaky` may be missing."""
    self.dataset = dataset
    if release is None:
      release, flaky = DATASETS[dataset].release, DATASETS[dataset].flaky
    self.release = release
    self.flaky = frozenset(flaky)
    self.root = pathlib.Path(root)
    self._cache: dict[str, Any] = {}
    # split -> expert -> ids without an entry, filled while the split's examples are read.
    self.missing: dict[str, dict[str, list[str]]] = {}

  def _path(self, relative: str) -> pathlib.Path:
    path = self.root / relative
    if not path.is_file():
      r = self.release
      raise ReleaseFileError(
          f'{self.dataset}: missing file {relative} (looked for {path}; inside the archive it '
          f'is {r.archive_path(relative)}). Download {r.url} and unpack it, or pass the '
          f'.tar.gz itself as the manual dir.')
    return path

  def _load(self, relative: str) -> Any:
    if relative not in self._cache:
      whole = (self.root / relative).is_file()
      shards = [] if whole else find_shards(self.root / relative)  # one file in shards
      path = shards[0].parent if shards else self._path(relative)
      try:
        self._cache[relative] = load_shards(shards) if shards else load_feature_file(path)
      except ReleaseFileError as e:
        raise ReleaseFileError(f'{self.dataset}: {relative}: {e}') from e
      except UnexpectedPickleContent as e:
        raise ReleaseFileError(f'{self.dataset}: {relative} ({path}): {e}') from e
      except Exception as e:  # h5py, pickle and EOF errors of truncated downloads
        raise ReleaseFileError(f'{self.dataset}: cannot read {relative} ({path}): '
                               f'{type(e).__name__}: {e}. The file is truncated or corrupt; '
                               f'download {self.release.url} again.') from e
    return self._cache[relative]

  def split_ids(self, split: str) -> list[str]:
    if split not in self.release.splits:
      raise ValueError(f'{self.dataset} has no split {split!r}: expected one of '
                       f'{sorted(self.release.splits)}')
    list_file = self.release.splits[split]
    ids = read_split_list(self._path(list_file))
    twice = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if twice:
      raise ReleaseFileError(f'{self.dataset}: {list_file} lists {len(twice)} id(s) more than '
                             f'once: {_shown(twice)}. Keep one line per id.')
    return ids

  def check_splits(self) -> dict[str, list[str]]:
    """Every split's ids, refusing what the reference cannot use either.

    An id in two splits (training on evaluation items) and an id without captions or word
    vectors (the reference's loader fails on it) raise ReleaseFileError naming the ids.
    """
    ids = {split: self.split_ids(split) for split in self.release.splits}
    for a, b in itertools.combinations(ids, 2):
      shared = sorted(set(ids[a]) & set(ids[b]))
      if shared:
        raise ReleaseFileError(
            f'{self.dataset}: {len(shared)} id(s) are in both {a} '
            f'({self.release.splits[a]}) and {b} ({self.release.splits[b]}): '
            f'{_shown(shared)}. An item belongs to one split; remove them from one list.')
    for table_file in (self.release.captions, self.release.word_vectors):
      table = self._load(table_file)
      for split, split_ids in ids.items():
        absent = [i for i in split_ids if i not in table]
        if absent:
          raise ReleaseFileError(
              f'{self.dataset}: {len(absent)} id(s) of {self.release.splits[split]} have no '
              f'entry in {table_file}: {_shown(absent)}. An item without captions and their '
              'word vectors cannot be used; remove them from the split list or use complete '
              'files.')
    return ids

  def missing_report(self, split: str) -> list[str]:
    """One log line per expert with gaps in `split` (read by `audio_examples` first)."""
    n = len(self.split_ids(split))
    lines = []
    for expert in self.release.experts:
      ids = self.missing.get(split, {}).get(expert.name, [])
      if ids:
        use = ('flaky: may be missing' if expert.name in self.flaky else
               'not flaky: a training split using it refuses these items, evaluation scores '
               'them without it')
        lines.append(f'{self.dataset} {split}: {len(ids)} of {n} item(s) have no '
                     f'{expert.name} entry in {self.release.expert_files[expert.name]} '
                     f'({use}): {_shown(ids)}')
    return lines

  def _feature(self, expert: Expert, item: str) -> tuple[np.ndarray, bool]:
    """(array, available) of one expert of one item; missing entries get an empty array."""
    path = self.release.expert_files[expert.name]
    features = self._load(path)
    try:
      value = features[item] if item in features else None
    except Exception as e:  # a truncated hickle can fail on first access of a dataset
      raise ReleaseFileError(f'{self.dataset}: cannot read item {item} of {path}: '
                             f'{type(e).__name__}: {e}') from e
    where = f'{self.dataset}: item {item} of {path} ({expert.name})'
    if is_missing(value):
      empty = (0, expert.dim) if expert.temporal == 'vlad' else (expert.dim,)
      return np.zeros(empty, np.float32), False
    array = np.asarray(value, np.float64)
    if expert.temporal == 'avg' and array.shape == (1, expert.dim):
      array = array[0]
    expected = f'[T, {expert.dim}]' if expert.temporal == 'vlad' else f'[{expert.dim}]'
    ok = (array.ndim == 2 and array.shape[1] == expert.dim if expert.temporal == 'vlad'
          else array.shape == (expert.dim,))
    if not ok:
      raise ReleaseFileError(f'{where} has shape {array.shape}, expected {expected}')
    if not np.all(np.isfinite(array)):
      raise ReleaseFileError(f'{where} holds NaN or Inf values')
    return array.astype(np.float32), True

  def _text(self, item: str) -> tuple[list[str], list[np.ndarray]]:
    captions = self._load(self.release.captions)
    vectors = self._load(self.release.word_vectors)
    for name, table in ((self.release.captions, captions), (self.release.word_vectors, vectors)):
      if item not in table:
        raise ReleaseFileError(f'{self.dataset}: item {item} has no entry in {name}')
    try:
      texts = [caption_text(c) for c in captions[item]]
    except UnicodeDecodeError as e:
      raise ReleaseFileError(f'{self.dataset}: item {item} of {self.release.captions} has a '
                             f'caption token that is not UTF-8 text ({e}); fix or remove that '
                             'caption') from e
    arrays = [np.asarray(v, np.float64) for v in vectors[item]]
    if len(texts) != len(arrays) or not texts:
      raise ReleaseFileError(f'{self.dataset}: item {item} has {len(texts)} captions in '
                             f'{self.release.captions} but {len(arrays)} in '
                             f'{self.release.word_vectors}')
    for i, a in enumerate(arrays):
      if a.ndim != 2 or a.shape[1] != WORD_DIM or not np.all(np.isfinite(a)):
        raise ReleaseFileError(f'{self.dataset}: item {item}, caption {i} of '
                               f'{self.release.word_vectors} has shape {a.shape} or non-finite '
                               f'values, expected finite [tokens, {WORD_DIM}]')
    return texts, [a.astype(np.float32) for a in arrays]

  def audio_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    """(id, example) with `id`, `audio_path`, `experts` and `available` only (no captions)."""
    missing = self.missing[split] = {e.name: [] for e in self.release.experts}
    for item in self.split_ids(split):
      experts, available = {}, {}
      for expert in self.release.experts:
        experts[expert.name], available[expert.name] = self._feature(expert, item)
        if not available[expert.name]:
          missing[expert.name].append(item)
      yield item, {'id': item, 'audio_path': self._audio_path(item), 'experts': experts,
                   'available': available}

  def examples(self, split: str) -> Iterator[tuple[str, dict]]:
    """(id, example) for every item of a split.

    Fields: `id`; `audio_path` ('' when unknown); `experts` (name -> `[T, D]` or `[D]`
    float32, empty `[0, D]` / zeros when missing); `available` (name -> bool, False for a
    missing entry, counted in `self.missing`); `captions`
    (texts); `caption_vectors` (one `[tokens, 300]` array per caption).
    """
    for item, example in self.audio_examples(split):
      example['captions'], example['caption_vectors'] = self._text(item)
      yield item, example

  def item_captions(self, item: str) -> list[str]:
    """The captions of `item` as texts, [] when it has none: a features folder holds captions
    only for the items its CSV described (none without --captions)."""
    table = self.release.captions
    if not ((self.root / table).is_file() or find_shards(self.root / table)):
      return []
    try:
      return [caption_text(c) for c in self._load(table).get(item, [])]
    except UnicodeDecodeError as e:
      raise ReleaseFileError(f'{self.dataset}: item {item} of {table} has a caption token that '
                             f'is not UTF-8 text ({e}); fix or remove that caption') from e

  def _audio_path(self, item: str) -> str:
    """Absolute path of the item's audio file where the release lists one, else ''."""
    if self.release.audio_files is None:
      return ''
    if 'audio_files' not in self._cache:
      self._cache['audio_files'] = json.loads(self._path(self.release.audio_files).read_text())
    relative = self._cache['audio_files'].get(item)
    return str((self.root / relative).absolute()) if relative else ''


def _shown(ids: list[str], limit: int = 10) -> str:
  """The first `limit` ids, comma-separated, and how many more there are."""
  more = f' (and {len(ids) - limit} more)' if len(ids) > limit else ''
  return ', '.join(ids[:limit]) + more
