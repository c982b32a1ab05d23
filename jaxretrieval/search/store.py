"""An audio search index on disk: item embeddings, availability, ids, the text tower.

Layout of an index directory:
  meta.json          spec, expert widths, text token limit, item count, the collection's
                     audio root(s), provenance
  embeddings.npy     [N, sum of expert widths] unit-norm expert embeddings side by side;
                     the block of an expert an item lacks is zero
  availability.npy   [N, M] 1 where the item has the expert
  items.json         ids and audio paths ('' when unknown)
  model.msgpack      the model's variables (the text tower encodes queries)
  word_vectors.npz   the word-vector table of the queries (`word_vectors.pkl` in older indexes)

`IndexStore.load` checks that these files belong together (counts, shapes, the model's
variables against the spec) and names the file at fault, so a mixed-up or truncated index
is refused at load instead of failing on every query.
"""

import dataclasses
import json
import pathlib

from absl import logging
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.models import ExpertSpec, ModelSpec, RetrievalModel
from jaxretrieval.text import WordVectors

REBUILD = 'rebuild the index with `python -m jaxretrieval.index`'


class IndexFileError(ValueError):
  """A file of an index is unreadable or does not match the rest of the index."""


def variable_shapes(spec: ModelSpec) -> dict:
  """The shapes and dtypes of the variables of a model with `spec` (nothing is computed)."""
  sample = {'experts': {e.name: jnp.zeros((1, 2, e.dim) if e.temporal == 'vlad' else (1, e.dim))
                        for e in spec.experts},
            'availability': jnp.ones((1, len(spec.experts))),
            'text': jnp.zeros((1, 2, spec.text_dim))}
  return jax.eval_shape(lambda: RetrievalModel(spec).init(jax.random.key(0), sample, train=False))


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


@dataclasses.dataclass
class IndexStore:
  spec: ModelSpec
  text_tokens: int
  embeddings: np.ndarray  # [N, sum d_e]
  availability: np.ndarray  # [N, M]
  ids: list[str]
  audio_paths: list[str]
  variables: dict
  words: WordVectors
  provenance: dict = dataclasses.field(default_factory=dict)
  audio_roots: list[str] = dataclasses.field(default_factory=list)  # resolved, absolute

  @property
  def widths(self) -> tuple[int, ...]:
    return self.spec.embed_dims()

  def __len__(self) -> int:
    return len(self.ids)

  def audio_file(self, row: int) -> pathlib.Path | None:
    """The audio file of item `row` if it exists inside the collection's root(s)."""
    path = contained(self.audio_paths[row], self.audio_roots)
    return path if path is not None and path.is_file() else None

  def save(self, directory: str | pathlib.Path) -> None:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / 'embeddings.npy', self.embeddings)
    np.save(directory / 'availability.npy', self.availability.astype(np.float32))
    (directory / 'items.json').write_text(json.dumps({'ids': self.ids,
                                                      'audio_paths': self.audio_paths}))
    (directory / 'model.msgpack').write_bytes(serialization.msgpack_serialize(
        serialization.to_state_dict(self.variables)))
    self.words.save(directory / 'word_vectors.npz')
    spec = dataclasses.asdict(self.spec)
    (directory / 'meta.json').write_text(json.dumps(
        {'spec': spec, 'text_tokens': self.text_tokens, 'num_items': len(self),
         'audio_roots': self.audio_roots, 'provenance': self.provenance}, indent=2))

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> 'IndexStore':
    """Reads and cross-checks every file of an index; `IndexFileError` names the bad one."""
    directory = pathlib.Path(directory)
    words_file = next((directory / f for f in ('word_vectors.npz', 'word_vectors.pkl')
                       if (directory / f).is_file()), directory / 'word_vectors.npz')
    missing = [f for f in ('meta.json', 'embeddings.npy', 'availability.npy', 'items.json',
                           'model.msgpack', words_file.name) if not (directory / f).is_file()]
    if missing:
      raise FileNotFoundError(f'{directory} is not a search index (missing {missing}); build '
                              'one with `python -m jaxretrieval.index`')
    meta_file = directory / 'meta.json'
    meta = _read(meta_file, lambda p: json.loads(p.read_text()))
    spec, text_tokens, n = _check_meta(meta_file, meta)
    embeddings = _read(directory / 'embeddings.npy', lambda p: np.load(p, mmap_mode='r'))
    availability = _read(directory / 'availability.npy', np.load)
    items = _read(directory / 'items.json', lambda p: json.loads(p.read_text()))
    variables = _read(directory / 'model.msgpack',
                      lambda p: serialization.msgpack_restore(p.read_bytes()))
    try:
      words = WordVectors.load(words_file)
    except ValueError as e:  # names the file: truncated, malformed, or a refused pickle
      raise IndexFileError(f'{e}; {REBUILD}') from e
    _check_array(directory / 'embeddings.npy', embeddings, (n, sum(spec.embed_dims())),
                 ('float32', 'float16'))
    _check_array(directory / 'availability.npy', availability, (n, len(spec.experts)),
                 ('float32',))
    if not np.isin(availability, (0.0, 1.0)).all():
      raise IndexFileError(f'{directory / "availability.npy"}: values other than 0 and 1; '
                           f'{REBUILD}')
    _check_items(directory / 'items.json', items, n)
    _check_variables(directory / 'model.msgpack', variables, spec)
    if words.dim != spec.text_dim:
      raise IndexFileError(f'{words_file}: {words.dim}-d word vectors, but the model in '
                           f'meta.json reads {spec.text_dim}-d ones; {REBUILD}')
    roots = [str(pathlib.Path(r).resolve()) for r in meta.get('audio_roots', [])]
    if not roots and any(items['audio_paths']):
      logging.warning('%s records no audio root (an index from an older version): its audio '
                      'is not served; %s', meta_file, REBUILD)
    return cls(spec=spec, text_tokens=text_tokens, embeddings=embeddings,
               availability=availability, ids=items['ids'], audio_paths=items['audio_paths'],
               variables=variables, words=words, provenance=meta.get('provenance', {}),
               audio_roots=roots)


def _read(path: pathlib.Path, reader):
  """`reader(path)`, with any failure of a truncated or corrupt file naming the file."""
  try:
    return reader(path)
  except Exception as e:  # json, numpy, msgpack and zip errors of damaged files
    raise IndexFileError(f'{path}: cannot read ({type(e).__name__}: {e}); the file is '
                         f'truncated or corrupt: {REBUILD}') from e


def _check_meta(path: pathlib.Path, meta) -> tuple[ModelSpec, int, int]:
  """(spec, text tokens, item count) from meta.json."""
  try:
    spec = dict(meta['spec'])
    spec['experts'] = tuple(ExpertSpec(**e) for e in spec['experts'])
    spec = ModelSpec(**spec)
    text_tokens, n = meta['text_tokens'], meta['num_items']
    roots = meta.get('audio_roots', [])
  except (KeyError, TypeError, ValueError) as e:
    raise IndexFileError(f'{path}: not the meta.json of an index ({type(e).__name__}: {e}); '
                         f'{REBUILD}') from e
  if not (isinstance(text_tokens, int) and text_tokens > 0 and isinstance(n, int) and n > 0
          and isinstance(roots, list) and all(isinstance(r, str) for r in roots)):
    raise IndexFileError(f'{path}: text_tokens={text_tokens!r}, num_items={n!r}, audio_roots='
                         f'{roots!r}; expected positive integers and a list of folders; '
                         f'{REBUILD}')
  return spec, text_tokens, n


def _check_array(path: pathlib.Path, array: np.ndarray, shape: tuple[int, ...],
                 dtypes: tuple[str, ...]) -> None:
  if array.shape != shape or array.dtype.name not in dtypes:
    raise IndexFileError(f'{path}: {array.dtype} array of shape {array.shape}, but meta.json '
                         f'describes {" or ".join(dtypes)} {shape}; the files come from '
                         f'different indexes: {REBUILD}')


def _check_items(path: pathlib.Path, items, n: int) -> None:
  ok = isinstance(items, dict) and all(
      isinstance(items.get(key), list) and len(items[key]) == n
      and all(isinstance(x, str) for x in items[key]) for key in ('ids', 'audio_paths'))
  if not ok:
    counts = {k: len(v) for k, v in items.items() if isinstance(v, list)} if isinstance(
        items, dict) else type(items).__name__
    raise IndexFileError(f'{path}: expected {n} ids and {n} audio paths (strings) as in '
                         f'meta.json, found {counts}; {REBUILD}')


def _check_variables(path: pathlib.Path, variables, spec: ModelSpec) -> None:
  """The restored variables have exactly the names and shapes of the model in meta.json."""
  want = traverse_util.flatten_dict(variable_shapes(spec), sep='/')
  got = traverse_util.flatten_dict(variables, sep='/') if isinstance(variables, dict) else {}
  for name in sorted(set(want) | set(got)):
    shape = np.shape(got[name]) if name in got else None
    if name not in want or shape != want[name].shape:
      expected = want[name].shape if name in want else 'absent'
      raise IndexFileError(f'{path}: variable {name} has shape {shape}, but the model in '
                           f'meta.json has {expected}; the files come from different '
                           f'indexes: {REBUILD}')
