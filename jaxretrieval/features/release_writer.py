"""Writes computed features in the release layout, so they take the real-data path.

Layout (a structured-symlinks folder): `<split>_list.txt`, `aggregated_<expert>/<expert>-raw.pkl`
(id -> `[T, D]`), `structured-symlinks/raw-captions.pkl` (id -> list of token lists),
`text_embeddings/w2v.pkl` (id -> list of `[tokens, 300]`), `audio_files.json` (id -> audio
file, relative to the folder when inside it), `experts.json` (expert -> width and whether
items may lack it) and `word_vectors.npz` (the table used). The per-item tables (features,
captions, word vectors) may be written in shards, `NAME-SSSSS-of-NNNNN.pkl` (the Beam
pipeline, `pipeline.py`): the release reader joins them into one table.

Item ids are the files' paths relative to the audio folder, escaped (`item_id`) so that the
line-based split lists round-trip any file name: `%`, characters that are not printable
(newlines, bytes of non-UTF-8 names) and leading/trailing white space become `%XX` bytes.
"""

from collections.abc import Iterable
import dataclasses
import json
import os
import pathlib
import pickle
import shutil
import urllib.parse

import numpy as np

from jaxretrieval.data import registry
from jaxretrieval.data.registry import computed_release
from jaxretrieval.data.release_files import shard_name
from jaxretrieval.data.releases import ReleaseReader
from jaxretrieval.text import WordVectors, tokenize

MANIFEST = 'experts.json'


def item_id(relative: str) -> str:
  """An id safe in a line-based list for a relative path (inverse: `relative_path`)."""
  out = []
  for k, c in enumerate(relative):
    edge = c.isspace() and (k == 0 or k == len(relative) - 1)
    if c == '%' or edge or not c.isprintable():
      out.append(''.join(f'%{b:02X}' for b in os.fsencode(c)))
    else:
      out.append(c)
  return ''.join(out)


def relative_path(item: str) -> str:
  """The relative path (as `os.fsdecode` spells it) an `item_id` stands for."""
  return os.fsdecode(urllib.parse.unquote_to_bytes(item))


@dataclasses.dataclass
class Item:
  id: str
  experts: dict[str, np.ndarray]
  captions: list[str]
  audio_file: pathlib.Path | None = None


def _dump(path: pathlib.Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(pickle.dumps(value, protocol=4))


def caption_vectors(captions: list[str], words: WordVectors) -> list[np.ndarray]:
  """Word vectors of each caption; a caption with no known word gets the reference's
  'unknown' vector, the mean of the first 50,000 words in sorted order (REFERENCE §1.3)."""
  out = []
  for c in captions:
    vectors, _ = words.encode(c)
    if not len(vectors):
      first = sorted(words.words)[:50000]
      vectors = words.matrix[[words.index[w] for w in first]].mean(axis=0, keepdims=True)
    out.append(vectors.astype(np.float32))
  return out


def write_items(root: pathlib.Path, items: list[Item], experts, words: WordVectors | None,
                with_captions: bool, shard: tuple[int, int] | None = None) -> None:
  """The per-item tables of `items`: each expert's features and, `with_captions`, the
  captions and their word vectors (which need `words`). With `shard=(k, n)` each table is
  written as shard k of n (`release_files.shard_name`), which the reader joins."""
  def dump(relative: str, value) -> None:
    path = root / relative
    _dump(shard_name(path, *shard) if shard else path, value)

  for expert in experts:
    dump(f'aggregated_{expert}/{expert}-raw.pkl',
         {it.id: it.experts[expert] for it in items if expert in it.experts})
  if with_captions:
    captioned = [it for it in items if it.captions]
    if captioned and words is None:
      raise ValueError('captions need a word-vector table')
    dump('structured-symlinks/raw-captions.pkl',
         {it.id: [tokenize(c) for c in it.captions] for it in captioned})
    dump('text_embeddings/w2v.pkl', {it.id: caption_vectors(it.captions, words)
                                     for it in captioned})


def write_tables(root: pathlib.Path, splits: dict[str, list[str]], experts: dict[str, int],
                 may_be_missing: set[str], audio_files: dict[str, pathlib.Path],
                 words: WordVectors | None) -> None:
  """The collection-wide files: split lists, `experts.json` (`may_be_missing`: experts
  some item lacks), `audio_files.json` and `word_vectors.npz`."""
  root.mkdir(parents=True, exist_ok=True)
  for split, ids in splits.items():
    bad = [i for i in ids if i != item_id(i) and i != item_id(relative_path(i))]
    if bad:
      raise ValueError(f'id {bad[0]!r} would not survive a line-based list; use item_id()')
    (root / f'{split}_list.txt').write_text(''.join(f'{i}\n' for i in ids), encoding='utf-8')
  manifest = {e: {'dim': int(d), 'may_be_missing': e in may_be_missing}
              for e, d in experts.items()}
  (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
  if words is not None:
    words.save(root / 'word_vectors.npz')
  audio = {}
  for item, file in audio_files.items():
    path = pathlib.Path(file).absolute()
    inside = path.is_relative_to(root.absolute())
    audio[item] = os.path.relpath(path, root.absolute()) if inside else str(path)
  (root / 'audio_files.json').write_text(json.dumps(audio, indent=0))


def write_release(root: pathlib.Path, items: list[Item], splits: dict[str, list[str]],
                  words: WordVectors | None, experts: dict[str, int] | None = None) -> None:
  """Writes every file of the layout; captions need `words`.

  `experts` (name -> width; default: those of the first item) may include experts that some
  items lack (`Item.experts` without the key): those are marked as possibly missing.
  """
  if experts is None:
    experts = {e: a.shape[-1] for e, a in (items[0].experts.items() if items else ())}
  write_tables(root, splits, experts, {e for e in experts for it in items if e not in it.experts},
               {it.id: it.audio_file for it in items if it.audio_file is not None}, words)
  write_items(root, items, experts, words, any(it.captions for it in items))


def folder_reader(root: pathlib.Path, splits, default_experts: Iterable[str] = ()
                  ) -> ReleaseReader:
  """A reader of a folder written here: its experts, and which items may lack, from
  `experts.json` (folders written before the manifest existed hold `default_experts`)."""
  manifest = root / MANIFEST
  if not manifest.is_file():
    return ReleaseReader('custom', root, computed_release('custom', splits, default_experts))
  try:
    experts = json.loads(manifest.read_text())
    dims = {e: int(v['dim']) for e, v in experts.items()}
    flaky = {e for e, v in experts.items() if v['may_be_missing']}
    for name, dim in dims.items():
      if registry.expert(name).dim != dim:
        raise ValueError(f'{name} is {dim}-d, registered as {registry.expert(name).dim}-d')
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'{manifest}: unreadable ({type(e).__name__}: {e}); run '
                     '`python -m jaxretrieval.features` again') from e
  return ReleaseReader('custom', root, computed_release('custom', splits, dims), flaky)


def replace_folder(built: pathlib.Path, out: pathlib.Path) -> None:
  """Moves a finished `built` folder to `out` (same file system), replacing an earlier output,
  so that `out` is never half-written."""
  old = out.with_name(f'.{out.name}.old-{os.getpid()}')
  if out.exists():
    out.rename(old)
  built.rename(out)
  if old.exists():
    shutil.rmtree(old)
