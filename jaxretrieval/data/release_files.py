"""Readers of the reference's release files: hickle 4, pickle, split lists (REFERENCE §1.2).

* Pickles load with `encoding='latin1'` through an allow-listing unpickler: containers,
  byte strings, NumPy arrays and the zsvision `ExpertStore` (also under its old module name
  `datastructures`) - nothing else can be built, so no file can run code.
* Hickle 4 dict files are read lazily with h5py (one item at a time, so a 6 GB AudioCaps
  file is never loaded whole); other hickle versions go through `hickle.load`.
"""

import _compat_pickle
import ast
from collections.abc import Iterator, Mapping
import pathlib
import pickle
import re
from typing import Any

import h5py
import numpy as np


class ReleaseFileError(Exception):
  """A release file is missing, unreadable or holds unexpected content."""


class ExpertStore:
  """zsvision's ExpertStore: a dense `[N, dim]` matrix with a key -> row map.

  Missing rows hold NaN. Built only by unpickling (attributes `keys`, `dim`, `store`,
  `keymap`, `missing`, `store_dtype`).
  """
  keymap: dict
  store: np.ndarray

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)

  def __getitem__(self, key: str) -> np.ndarray:
    return self.store[self.keymap[key]]

  def __contains__(self, key: object) -> bool:
    return key in self.keymap

  def __len__(self) -> int:
    return len(self.keymap)

  def keys(self):
    return self.keymap.keys()

  def get(self, key: str, default: Any = None) -> Any:
    return self[key] if key in self else default


def _numpy(module_suffix: str, name: str):
  import importlib
  for prefix in ('numpy._core', 'numpy.core'):
    try:
      return getattr(importlib.import_module(f'{prefix}.{module_suffix}'), name)
    except (ImportError, AttributeError):
      continue
  raise pickle.UnpicklingError(f'numpy has no {module_suffix}.{name}')


_ALLOWED = {
    ('builtins', 'dict'), ('builtins', 'list'), ('builtins', 'set'), ('builtins', 'tuple'),
    ('builtins', 'frozenset'), ('builtins', 'slice'), ('builtins', 'bytes'),
    ('collections', 'OrderedDict'),
    ('collections', 'defaultdict'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('_codecs', 'encode'), ('copyreg', '_reconstructor'), ('builtins', 'object'),
}
_EXPERT_STORE_MODULES = ('datastructures', 'zsvision.datastructures', 'utils.datastructures')


class UnexpectedPickleContent(ReleaseFileError):
  """A pickle names a class that release files never hold."""


class _ReleaseUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol <= 2
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if name == 'ExpertStore' and module in _EXPERT_STORE_MODULES:
      return ExpertStore
    if module in ('numpy.core.multiarray', 'numpy._core.multiarray') and name in (
        '_reconstruct', 'scalar'):
      return _numpy('multiarray', name)
    if module == 'numpy' and isinstance(getattr(np, name, None), type) and issubclass(
        getattr(np, name), np.generic):  # scalar types such as numpy.float16
      return getattr(np, name)
    if (module, name) in _ALLOWED:
      return super().find_class(module, name)
    raise UnexpectedPickleContent(f'release pickles hold containers and NumPy arrays, not '
                                  f'{module}.{name}')


def load_pickle(path: pathlib.Path) -> Any:
  """A release pickle (`.pkl` / `.pickle`), decoded with latin1 as the reference does."""
  with open(path, 'rb') as f:
    return _ReleaseUnpickler(f, encoding='latin1').load()


class HickleFile(Mapping):
  """Lazy, read-only mapping over a hickle-4 file holding a `dict[str, value]`.

  hickle 4 writes each item as group `data/'<key>'` holding a dataset `data`: an array
  (base_type `ndarray`) or a float (base_type `float`, the NaN that marks a missing item).
  """

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._file = h5py.File(path, 'r')
    root = self._file
    version = _attr_str(root.attrs.get('HICKLE_VERSION', ''))
    if not version.startswith('4.') or 'data' not in root:
      raise ValueError(f'not a hickle 4 file (HICKLE_VERSION={version!r})')
    data = root['data']
    if _attr_str(data.attrs.get('base_type', '')) != 'dict':
      raise ValueError('the hickle file does not hold a dict')
    self._groups = {str(ast.literal_eval(name)): name for name in data.keys()}
    self._data = data

  def __getitem__(self, key: str) -> Any:
    node = self._data[self._groups[key]]['data']
    value = node[()]
    return float(value) if _attr_str(node.attrs.get('base_type', '')) == 'float' else value

  def __iter__(self) -> Iterator[str]:
    return iter(self._groups)

  def __len__(self) -> int:
    return len(self._groups)

  def __contains__(self, key: object) -> bool:
    return key in self._groups


def _attr_str(value: Any) -> str:
  """hickle attributes are bytes under h5py 2 and may read back as str or bytes."""
  if isinstance(value, (bytes, np.bytes_)):
    return value.decode('ascii', 'replace')
  return str(value)


def load_hickle(path: pathlib.Path) -> Mapping:
  """A hickle dict file: lazily for hickle 4 (the release's), else through `hickle.load`."""
  try:
    return HickleFile(path)
  except ValueError:
    import hickle  # other hickle versions: eager load
    return hickle.load(str(path))


def load_feature_file(path: pathlib.Path) -> Mapping:
  """A release file by suffix, as the reference's `memcache` does."""
  if path.suffix in ('.hickle', '.hkl'):
    return load_hickle(path)
  if path.suffix in ('.pkl', '.pickle'):
    return load_pickle(path)
  raise ReleaseFileError(f'{path}: unknown release file type {path.suffix!r}')


def shard_name(path: pathlib.Path, shard: int, count: int) -> pathlib.Path:
  """`STEM-SSSSS-of-NNNNN.SUFFIX`: shard `shard` of the `count` files that stand for `path`
  (a sharded writer such as the Beam feature pipeline)."""
  return path.with_name(f'{path.stem}-{shard:05d}-of-{count:05d}{path.suffix}')


def find_shards(path: pathlib.Path) -> list[pathlib.Path]:
  """The complete set of shards standing for `path`, or [] when there is none; a set with
  a shard missing, or shards of two different counts, raises ReleaseFileError."""
  pattern = re.compile(re.escape(path.stem) + r'-(\d{5})-of-(\d{5})' + re.escape(path.suffix))
  found = {}
  if path.parent.is_dir():
    for p in path.parent.iterdir():
      match = pattern.fullmatch(p.name)
      if match:
        found[p] = (int(match[1]), int(match[2]))
  counts = {n for _, n in found.values()}
  if len(counts) > 1:
    raise ReleaseFileError(f'{path}: shards of {len(counts)} different runs ({sorted(counts)} '
                           'shards) side by side; remove the older ones')
  if not found:
    return []
  count = counts.pop()
  absent = sorted(set(range(count)) - {k for k, _ in found.values()})
  if absent:
    raise ReleaseFileError(f'{shard_name(path, absent[0], count)}: missing ({len(absent)} of '
                           f'{count} shards absent); run the extraction again')
  return sorted(found, key=lambda p: found[p][0])


def load_shards(paths: list[pathlib.Path]) -> dict:
  """One mapping of the items of every shard; an item in two shards raises."""
  merged, origin = {}, {}
  for path in paths:
    for key, value in load_feature_file(path).items():
      if key in merged:
        raise ReleaseFileError(f'item {key} is in both {origin[key]} and {path}; remove the '
                               'shards of the older run')
      merged[key], origin[key] = value, path
  return merged


def read_split_list(path: pathlib.Path) -> list[str]:
  """Ids of a split list: one per line, blank lines ignored."""
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def caption_text(caption: Any) -> str:
  """A caption as text: a string, or its tokens joined by spaces.

  Tokens stored as bytes (Python 3 pickles of byte strings) are decoded as UTF-8; a
  token that is not UTF-8 raises UnicodeDecodeError, so the caller can name the item.
  """
  tokens = [caption] if isinstance(caption, (str, bytes)) else caption
  return ' '.join(t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in tokens)


def is_missing(value: Any) -> bool:
  """A missing feature: absent (None), a float NaN, an all-NaN row (ExpertStore) or an
  array with no frames (`(0, D)`, which holds nothing to pool)."""
  if value is None:
    return True
  if isinstance(value, (float, np.floating)):
    return bool(np.isnan(value))
  array = np.asarray(value)
  if array.size == 0:
    return True
  return array.dtype.kind == 'f' and bool(np.all(np.isnan(array)))
