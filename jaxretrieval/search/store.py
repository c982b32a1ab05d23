"""An audio search index on disk: item embeddings, availability, ids, the text tower.

Layout of an index directory:
  meta.json          the manifest: spec, text token limit, item count, the shards in order
                     with their item counts, the collection's audio root(s), provenance
  model.msgpack      the model's variables (the text tower encodes queries)
  word_vectors.npz   the word-vector table of the queries (`word_vectors.pkl` in older indexes)
and per shard, its file names starting with the shard's prefix ('' for the first shard of
a build; `shard-<hex>-` for its further shards and for shards written by `--add` and
`--remove`):
  embeddings.npy     [n, sum of expert widths] float32 or float16 unit-norm expert embeddings
                     side by side; the block of an expert an item lacks is zero
  availability.npy   [n, M] 1 where the item has the expert
  items.json         ids, audio paths ('' when unknown), captions and durations (seconds,
                     null when unknown)
  thumbnails.npy     only in shards whose meta.json entry says "thumbnails": true: [n + 1]
  thumbnails.bin     int64 offsets into the .bin file, which holds the items' PNG spectrogram
                     thumbnails back to back (item i: bytes offsets[i]:offsets[i + 1], empty
                     for an item without a readable audio file)

The index changes only by writing new shard files and then replacing meta.json atomically
(`commit`), so an interrupted `--add` or `--remove` leaves the previous index intact (its
unreferenced shard files are deleted by the next change). `IndexStore.load` checks that the
files belong together (counts, shapes, the model's variables against the spec) and names
the file at fault, so a mixed-up or truncated index is refused at load instead of failing on
every query. The embeddings are memory-mapped, never read whole: a build writes one shard per
batch of items (`write_index`) and a query reads the shards in place, so neither needs the
collection's embeddings in memory.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import uuid

from absl import logging
from flax import serialization, traverse_util
import numpy as np

from jaxretrieval.models import ExpertSpec, ModelSpec, abstract_variables
from jaxretrieval.search.thumbnails import PNG_SIGNATURE
from jaxretrieval.text import WordVectors

REBUILD = 'rebuild the index with `python -m jaxretrieval.search.index`'
SHARD_FILES = ('embeddings.npy', 'availability.npy', 'items.json')
THUMBNAIL_FILES = ('thumbnails.npy', 'thumbnails.bin')


class IndexFileError(ValueError):
  """A file of an index is unreadable or does not match the rest of the index."""


def contained(path: str, roots: list[str]) -> pathlib.Path | None:
  """`path` with symlinks resolved when it lies inside one of the folders `roots` (resolved
  absolute paths), else None.

  The one containment rule of the index: applied when it is built and whenever audio is
  served (`..` and symlinks pointing out of the collection are resolved first).
  """
  if not path:
    return None
  resolved = pathlib.Path(path).resolve()
  return resolved if any(resolved.is_relative_to(r) for r in roots) else None


class ShardRows:
  """The rows of several memory-mapped shard arrays read as one `[N, D]` array, without
  copying them into one: rows by index, slices (step 1) and lists of rows are read from the
  shards that hold them."""

  def __init__(self, parts: list[np.ndarray]):
    self.parts = parts
    self.starts = np.cumsum([0] + [len(p) for p in parts])
    self.shape = (int(self.starts[-1]),) + parts[0].shape[1:]
    self.dtype = parts[0].dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __array__(self, dtype=None, copy=None):
    del copy
    out = np.concatenate(self.parts)
    return out if dtype is None else out.astype(dtype)

  def __getitem__(self, key):
    if isinstance(key, slice):
      start, stop, step = key.indices(len(self))
      if step != 1:
        raise IndexError('ShardRows: slices with a step are not supported')
      pieces = [p[max(start - a, 0):max(min(stop, b) - a, 0)]
                for p, a, b in zip(self.parts, self.starts[:-1], self.starts[1:])]
      return np.concatenate(pieces)
    if np.ndim(key) == 0:
      row = int(key) + len(self) if int(key) < 0 else int(key)
      if not 0 <= row < len(self):
        raise IndexError(f'row {key} of {len(self)}')
      part = int(np.searchsorted(self.starts, row, side='right')) - 1
      return self.parts[part][row - self.starts[part]]
    rows = np.asarray(key, np.int64).reshape(-1)
    rows = np.where(rows < 0, rows + len(self), rows)
    if rows.size and not (0 <= rows.min() and rows.max() < len(self)):
      raise IndexError(f'rows outside 0..{len(self) - 1}')
    part = np.searchsorted(self.starts, rows, side='right') - 1
    out = np.empty((len(rows),) + self.shape[1:], self.dtype)
    for p in np.unique(part):
      chosen = part == p
      out[chosen] = self.parts[p][rows[chosen] - self.starts[p]]
    return out.reshape(np.shape(key) + self.shape[1:])


@dataclasses.dataclass(frozen=True)
class ThumbnailPack:
  """The PNG thumbnails of one shard's items, back to back (memory-mapped when loaded)."""
  offsets: np.ndarray  # [n + 1] int64; item i is data[offsets[i]:offsets[i + 1]]
  data: np.ndarray  # uint8

  @classmethod
  def of(cls, pngs: list[bytes]) -> 'ThumbnailPack':
    offsets = np.cumsum([0] + [len(p) for p in pngs], dtype=np.int64)
    return cls(offsets, np.frombuffer(b''.join(pngs), np.uint8))

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> bytes:
    """Item i's PNG, b'' when it has none."""
    return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes()


@dataclasses.dataclass
class IndexStore:
  spec: ModelSpec
  text_tokens: int
  embeddings: np.ndarray | ShardRows  # [N, sum d_e]; memory-mapped when loaded
  availability: np.ndarray  # [N, M]
  ids: list[str]
  audio_paths: list[str]
  variables: dict
  words: WordVectors
  provenance: dict = dataclasses.field(default_factory=dict)
  audio_roots: list[str] = dataclasses.field(default_factory=list)  # resolved, absolute
  captions: list[list[str]] | None = None  # per item (default: none)
  durations: list[float | None] | None = None  # per item, seconds (default: unknown)
  shards: list[dict] | None = None  # as in meta.json (default: one shard with prefix '')
  max_tokens: dict[str, int] | None = None  # the config's token limits (experts and text)
  thumbnails: list[ThumbnailPack | None] | None = None  # per shard (default: none)

  def __post_init__(self):
    self.shards = [{'prefix': '', 'items': len(self.ids)}] if self.shards is None else self.shards
    self.thumbnails = [None] * len(self.shards) if self.thumbnails is None else self.thumbnails
    self.captions = [[] for _ in self.ids] if self.captions is None else self.captions
    self.durations = [None] * len(self.ids) if self.durations is None else self.durations

  @property
  def widths(self) -> tuple[int, ...]:
    return self.spec.embed_dims()

  def __len__(self) -> int:
    return len(self.ids)

  def audio_file(self, row: int) -> pathlib.Path | None:
    """The audio file of item `row` if it exists inside the collection's root(s)."""
    path = contained(self.audio_paths[row], self.audio_roots)
    return path if path is not None and path.is_file() else None

  def thumbnail(self, row: int) -> bytes:
    """The PNG thumbnail of item `row` (0 <= row < len), b'' when it has none."""
    starts = np.cumsum([0] + [s['items'] for s in self.shards])
    shard = int(np.searchsorted(starts, row, side='right')) - 1
    pack = self.thumbnails[shard]
    return b'' if pack is None else pack[row - int(starts[shard])]

  def save(self, directory: str | pathlib.Path) -> None:
    """Writes the index as one shard with prefix ''."""
    write_index(directory, self, [(self.embeddings, self.availability, self.items(),
                                   self.thumbnails[0])])

  def items(self, rows=None) -> dict:
    """The items.json content of `rows` (default: all)."""
    rows = range(len(self)) if rows is None else rows
    return {'ids': [self.ids[r] for r in rows],
            'audio_paths': [self.audio_paths[r] for r in rows],
            'captions': [self.captions[r] for r in rows],
            'durations': [self.durations[r] for r in rows]}

  def manifest(self, shards: list[dict]) -> dict:
    """The meta.json content for `shards` (prefix and item count of each, in order)."""
    return {'spec': dataclasses.asdict(self.spec), 'text_tokens': self.text_tokens,
            'num_items': sum(s['items'] for s in shards), 'shards': shards,
            'audio_roots': self.audio_roots, 'max_tokens': self.max_tokens,
            'provenance': self.provenance}

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> 'IndexStore':
    """Reads and cross-checks every file of an index; `IndexFileError` names the bad one."""
    directory = pathlib.Path(directory)
    words_file = next((directory / f for f in ('word_vectors.npz', 'word_vectors.pkl')
                       if (directory / f).is_file()), directory / 'word_vectors.npz')
    missing = [f for f in ('meta.json', 'model.msgpack', words_file.name)
               if not (directory / f).is_file()]
    if missing:
      raise FileNotFoundError(f'{directory} is not a search index (missing {missing}); build '
                              'one with `python -m jaxretrieval.search.index`')
    meta_file = directory / 'meta.json'
    meta = _read(meta_file, lambda p: json.loads(p.read_text()))
    spec, text_tokens, shards = _check_meta(meta_file, meta)
    with_thumbnails = _thumbnail_shards(meta_file, meta)
    missing = [p + f for p in shards for f in SHARD_FILES + (
        THUMBNAIL_FILES if p in with_thumbnails else ()) if not (directory / (p + f)).is_file()]
    if missing:
      raise IndexFileError(f'{meta_file} lists shard files that are missing: {missing}; '
                           f'{REBUILD}')
    variables = _read(directory / 'model.msgpack',
                      lambda p: serialization.msgpack_restore(p.read_bytes()))
    try:
      words = WordVectors.load(words_file)
    except ValueError as e:  # names the file: truncated, malformed, or a refused pickle
      raise IndexFileError(f'{e}; {REBUILD}') from e
    parts = [_load_shard(directory, prefix, n, spec) for prefix, n in shards.items()]
    thumbnails = [_load_thumbnails(directory, prefix, n) if prefix in with_thumbnails else None
                  for prefix, n in shards.items()]
    _check_variables(directory / 'model.msgpack', variables, spec)
    if words.dim != spec.text_dim:
      raise IndexFileError(f'{words_file}: {words.dim}-d word vectors, but the model in '
                           f'meta.json reads {spec.text_dim}-d ones; {REBUILD}')
    embeddings, availability, items = zip(*parts)
    for prefix, e in zip(shards, embeddings):
      if e.dtype != embeddings[0].dtype:
        raise IndexFileError(f'{directory / f"{prefix}embeddings.npy"}: {e.dtype} embeddings, '
                             f'but the first shard holds {embeddings[0].dtype} ones; shards '
                             f'of an index share one dtype: {REBUILD}')
    items = {key: [x for part in items for x in part[key]] for key in items[0]}
    if len(set(items['ids'])) != len(items['ids']):
      raise IndexFileError(f'{meta_file}: its shards repeat item ids; {REBUILD}')
    roots = [str(pathlib.Path(r).resolve()) for r in meta.get('audio_roots', [])]
    if not roots and any(items['audio_paths']):
      logging.warning('%s records no audio root (an index from an older version): its audio '
                      'is not served; %s', meta_file, REBUILD)
    return cls(spec=spec, text_tokens=text_tokens,
               embeddings=embeddings[0] if len(parts) == 1 else ShardRows(list(embeddings)),
               availability=np.concatenate(availability), ids=items['ids'],
               audio_paths=items['audio_paths'], variables=variables, words=words,
               provenance=meta.get('provenance', {}), audio_roots=roots,
               captions=items['captions'], durations=items['durations'],
               shards=[{'prefix': p, 'items': n} | (
                   {'thumbnails': True} if p in with_thumbnails else {})
                       for p, n in shards.items()],
               max_tokens=meta.get('max_tokens'), thumbnails=thumbnails)


def write_index(directory: str | pathlib.Path, header: IndexStore, shards) -> int:
  """Writes a new index and returns its number of items: the model, word vectors and
  manifest fields of `header` (its items are not written) and one shard per
  (embeddings, availability, items.json content, ThumbnailPack or None) that the iterable
  `shards` yields.

  Shards are consumed one at a time, so a generator that embeds (or reads) one batch of
  items per shard keeps at most one shard in memory however large the collection. The
  first shard gets prefix '', the others `shard-<hex>-`; meta.json is written last.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'model.msgpack').write_bytes(serialization.msgpack_serialize(
      serialization.to_state_dict(header.variables)))
  header.words.save(directory / 'word_vectors.npz')
  listed = []
  for shard in shards:
    listed.append(write_shard(directory, new_shard_prefix() if listed else '', *shard))
  if not listed:
    raise ValueError(f'no items to write into {directory}')
  commit(directory, header.manifest(listed))
  return sum(s['items'] for s in listed)


def write_shard(directory: pathlib.Path, prefix: str, embeddings: np.ndarray,
                availability: np.ndarray, items: dict,
                thumbnails: ThumbnailPack | None = None) -> dict:
  """Writes one shard's files and returns its meta.json entry (the shard is not yet part of
  the index: `commit` makes it so); with `thumbnails`, also their two files."""
  np.save(directory / f'{prefix}embeddings.npy', embeddings)
  np.save(directory / f'{prefix}availability.npy', np.asarray(availability, np.float32))
  (directory / f'{prefix}items.json').write_text(json.dumps(items))
  entry = {'prefix': prefix, 'items': len(items['ids'])}
  if thumbnails is not None:
    np.save(directory / f'{prefix}thumbnails.npy', thumbnails.offsets)
    (directory / f'{prefix}thumbnails.bin').write_bytes(thumbnails.data.tobytes())
    entry['thumbnails'] = True
  return entry


def new_shard_prefix() -> str:
  return f'shard-{uuid.uuid4().hex[:12]}-'


@contextlib.contextmanager
def changing(directory: pathlib.Path):
  """Holds the index's lock file while it is changed, so that two `--add`/`--remove` runs
  take turns (each would otherwise drop the other's shard)."""
  if not (directory / 'meta.json').is_file():
    raise FileNotFoundError(f'{directory} is not a search index (no meta.json); build one with '
                            '`python -m jaxretrieval.search.index`')
  with open(directory / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def commit(directory: pathlib.Path, manifest: dict) -> None:
  """Replaces meta.json atomically (written beside it, flushed, renamed), then deletes the
  shard files it no longer lists."""
  tmp = directory / 'meta.json.tmp'
  with open(tmp, 'w') as f:
    f.write(json.dumps(manifest, indent=2))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, directory / 'meta.json')
  listed = {s['prefix'] + f for s in manifest['shards']
            for f in SHARD_FILES + (THUMBNAIL_FILES if s.get('thumbnails') else ())}
  kinds = SHARD_FILES + THUMBNAIL_FILES
  for path in directory.iterdir():
    if path.name not in listed and any(path.name.endswith(f) for f in kinds) and (
        path.name in kinds or path.name.startswith('shard-')):
      path.unlink()


def _load_shard(directory: pathlib.Path, prefix: str, n: int, spec: ModelSpec):
  """(embeddings, availability, items) of one shard, checked against its count in meta.json."""
  embeddings = _read(directory / f'{prefix}embeddings.npy', lambda p: np.load(p, mmap_mode='r'))
  availability = _read(directory / f'{prefix}availability.npy', np.load)
  items = _read(directory / f'{prefix}items.json', lambda p: json.loads(p.read_text()))
  _check_array(directory / f'{prefix}embeddings.npy', embeddings, (n, sum(spec.embed_dims())),
               ('float32', 'float16'))
  _check_array(directory / f'{prefix}availability.npy', availability, (n, len(spec.experts)),
               ('float32',))
  if not np.isin(availability, (0.0, 1.0)).all():
    raise IndexFileError(f'{directory / f"{prefix}availability.npy"}: values other than 0 and '
                         f'1; {REBUILD}')
  _check_items(directory / f'{prefix}items.json', items, n)
  return embeddings, availability, items


def _load_thumbnails(directory: pathlib.Path, prefix: str, n: int) -> ThumbnailPack:
  """One shard's thumbnails, checked: n + 1 non-decreasing offsets from 0 to the size of the
  .bin file, each non-empty item at least a PNG signature long, and the signature at 64 of
  them."""
  offsets_file, bin_file = (directory / f'{prefix}{f}' for f in THUMBNAIL_FILES)
  offsets = _read(offsets_file, np.load)
  data = _read(bin_file, lambda p: np.memmap(p, np.uint8, 'r') if p.stat().st_size
               else np.zeros(0, np.uint8))
  if not (offsets.shape == (n + 1,) and offsets.dtype == np.int64 and offsets[0] == 0
          and (np.diff(offsets) >= 0).all()):
    raise IndexFileError(f'{offsets_file}: {offsets.dtype} array of shape {offsets.shape}, '
                         f'expected {n + 1} non-decreasing int64 offsets from 0 (meta.json '
                         f'lists {n} items); the files come from different indexes: {REBUILD}')
  sizes = np.diff(offsets)
  # The PNG headers of 64 items spread over the shard (all of a million would read the file).
  starts = offsets[:-1][sizes > 0]
  starts = starts[np.linspace(0, len(starts) - 1, min(len(starts), 64)).astype(np.int64)]
  heads = starts[:, None] + np.arange(len(PNG_SIGNATURE))
  if offsets[-1] != len(data) or (sizes[sizes > 0] < len(PNG_SIGNATURE)).any() or (
      data[heads] != np.frombuffer(PNG_SIGNATURE, np.uint8)).any():
    raise IndexFileError(f'{bin_file}: {len(data)} bytes, but {offsets_file.name} indexes '
                         f'{offsets[-1]} bytes of PNG thumbnails; the file is truncated or '
                         f'corrupt: {REBUILD}')
  return ThumbnailPack(offsets, data)


def _read(path: pathlib.Path, reader):
  """`reader(path)`, with any failure of a truncated or corrupt file naming the file."""
  try:
    return reader(path)
  except Exception as e:  # json, numpy, msgpack and zip errors of damaged files
    raise IndexFileError(f'{path}: cannot read ({type(e).__name__}: {e}); the file is '
                         f'truncated or corrupt: {REBUILD}') from e


def _check_meta(path: pathlib.Path, meta) -> tuple[ModelSpec, int, dict[str, int]]:
  """(spec, text tokens, shard prefix -> item count) from meta.json (an index written before
  shards is one shard with prefix '')."""
  try:
    spec = dict(meta['spec'])
    spec['experts'] = tuple(ExpertSpec(**e) for e in spec['experts'])
    spec = ModelSpec(**spec)
    text_tokens, n = meta['text_tokens'], meta['num_items']
    roots = meta.get('audio_roots', [])
    shards = {s['prefix']: s['items'] for s in meta.get('shards', [{'prefix': '', 'items': n}])}
  except (KeyError, TypeError, ValueError) as e:
    raise IndexFileError(f'{path}: not the meta.json of an index ({type(e).__name__}: {e}); '
                         f'{REBUILD}') from e
  limits = meta.get('max_tokens') or {}
  limits_ok = isinstance(limits, dict) and all(
      isinstance(v, int) and v > 0 for v in limits.values())
  counts_ok = all(isinstance(c, int) and c > 0 for c in shards.values()) and (
      sum(shards.values()) == n) and all(p == '' or (p.startswith('shard-') and p.isascii()
                                                     and '/' not in p) for p in shards)
  if not (isinstance(text_tokens, int) and text_tokens > 0 and isinstance(n, int) and n > 0
          and isinstance(roots, list) and all(isinstance(r, str) for r in roots) and counts_ok
          and limits_ok):
    raise IndexFileError(f'{path}: text_tokens={text_tokens!r}, num_items={n!r}, shards='
                         f'{shards!r}, audio_roots={roots!r}, max_tokens={limits!r}; expected '
                         f'positive integers, shards named shard-<hex>- whose counts add up '
                         f'to num_items, a list of folders and positive token limits; '
                         f'{REBUILD}')
  return spec, text_tokens, shards


def _thumbnail_shards(path: pathlib.Path, meta: dict) -> set[str]:
  """The prefixes of the shards whose meta.json entry says "thumbnails": true."""
  flags = [s.get('thumbnails', False) for s in meta.get('shards', [])]
  if not all(isinstance(f, bool) for f in flags):
    raise IndexFileError(f'{path}: shard entries with "thumbnails": {flags}; expected true or '
                         f'false; {REBUILD}')
  return {s['prefix'] for s in meta.get('shards', []) if s.get('thumbnails')}


def _check_array(path: pathlib.Path, array: np.ndarray, shape: tuple[int, ...],
                 dtypes: tuple[str, ...]) -> None:
  if array.shape != shape or array.dtype.name not in dtypes:
    raise IndexFileError(f'{path}: {array.dtype} array of shape {array.shape}, but meta.json '
                         f'describes {" or ".join(dtypes)} {shape}; the files come from '
                         f'different indexes: {REBUILD}')


def _check_items(path: pathlib.Path, items, n: int) -> None:
  """n ids and audio paths (strings), captions (lists of strings) and durations (numbers or
  null); indexes written before captions and durations get none and null."""
  if isinstance(items, dict):
    items.setdefault('captions', [[] for _ in range(n)])
    items.setdefault('durations', [None] * n)
  is_list = lambda x: isinstance(x, list) and all(isinstance(c, str) for c in x)
  is_duration = lambda x: x is None or (isinstance(x, (int, float)) and x >= 0)
  ok = isinstance(items, dict) and all(
      isinstance(items.get(key), list) and len(items[key]) == n and all(map(valid, items[key]))
      for key, valid in (('ids', lambda x: isinstance(x, str)),
                         ('audio_paths', lambda x: isinstance(x, str)),
                         ('captions', is_list), ('durations', is_duration)))
  if not ok:
    counts = {k: len(v) for k, v in items.items() if isinstance(v, list)} if isinstance(
        items, dict) else type(items).__name__
    raise IndexFileError(f'{path}: expected {n} ids and {n} audio paths (strings), captions '
                         f'and durations as in meta.json, found {counts}; {REBUILD}')


def _check_variables(path: pathlib.Path, variables, spec: ModelSpec) -> None:
  """The restored variables have exactly the names and shapes of the model in meta.json."""
  want = traverse_util.flatten_dict(abstract_variables(spec), sep='/')
  got = traverse_util.flatten_dict(variables, sep='/') if isinstance(variables, dict) else {}
  for name in sorted(set(want) | set(got)):
    shape = np.shape(got[name]) if name in got else None
    if name not in want or shape != want[name].shape:
      expected = want[name].shape if name in want else 'absent'
      raise IndexFileError(f'{path}: variable {name} has shape {shape}, but the model in '
                           f'meta.json has {expected}; the files come from different '
                           f'indexes: {REBUILD}')
