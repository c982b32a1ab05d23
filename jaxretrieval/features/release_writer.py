"""Writes computed features in the release layout, so they take the real-data path.

Layout (a structured-symlinks folder): `<split>_list.txt`, `aggregated_<expert>/<expert>-raw.pkl`
(id -> `[T, D]`), `structured-symlinks/raw-captions.pkl` (id -> list of token lists),
`text_embeddings/w2v.pkl` (id -> list of `[tokens, 300]`), `audio_files.json` (id -> audio
file, relative to the folder when inside it) and `word_vectors.npz` (the table used).
"""

import dataclasses
import json
import os
import pathlib
import pickle

import numpy as np

from jaxretrieval.text import WordVectors, tokenize


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


def write_release(root: pathlib.Path, items: list[Item], splits: dict[str, list[str]],
                  words: WordVectors | None) -> None:
  """Writes every file of the layout; captions need `words`."""
  root.mkdir(parents=True, exist_ok=True)
  for split, ids in splits.items():
    (root / f'{split}_list.txt').write_text(''.join(f'{i}\n' for i in ids))
  for expert in items[0].experts if items else ():
    _dump(root / f'aggregated_{expert}' / f'{expert}-raw.pkl',
          {it.id: it.experts[expert] for it in items})
  captioned = [it for it in items if it.captions]
  if captioned:
    if words is None:
      raise ValueError('captions need a word-vector table')
    _dump(root / 'structured-symlinks' / 'raw-captions.pkl',
          {it.id: [tokenize(c) for c in it.captions] for it in captioned})
    _dump(root / 'text_embeddings' / 'w2v.pkl',
          {it.id: caption_vectors(it.captions, words) for it in captioned})
  if words is not None:
    words.save(root / 'word_vectors.npz')
  audio = {}
  for it in items:
    if it.audio_file is not None:
      path = pathlib.Path(it.audio_file).absolute()
      inside = path.is_relative_to(root.absolute())
      audio[it.id] = os.path.relpath(path, root.absolute()) if inside else str(path)
  (root / 'audio_files.json').write_text(json.dumps(audio, indent=0))
