"""Captions to word vectors: tokenisation and word-vector tables (REFERENCE §1.3).

The reference maps each caption token to its word2vec (GoogleNews, 300-d) vector and drops
words without one. `WordVectors` reads a table as a pickled `dict[str, vector]` (what
SynthCaps writes) or in word2vec's binary or text format (what gensim's
`KeyedVectors.save_word2vec_format` and the GoogleNews release use).
"""

import pathlib
import pickle
import re

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def tokenize(caption: str) -> list[str]:
  """Lower-cased word tokens; punctuation dropped, inner hyphens and apostrophes kept."""
  return _TOKEN.findall(caption.lower())


class WordVectors:
  """A word -> vector table."""

  def __init__(self, vectors: dict[str, np.ndarray]):
    if not vectors:
      raise ValueError('empty word-vector table')
    self.words = list(vectors)
    self.index = {w: i for i, w in enumerate(self.words)}
    self.matrix = np.stack([np.asarray(vectors[w], np.float32) for w in self.words])

  @property
  def dim(self) -> int:
    return self.matrix.shape[1]

  def __contains__(self, word: str) -> bool:
    return word in self.index

  def encode(self, caption: str) -> tuple[np.ndarray, list[str]]:
    """`[known tokens, dim]` vectors of a caption and the list of unknown words."""
    tokens = tokenize(caption)
    known = [t for t in tokens if t in self.index]
    unknown = [t for t in tokens if t not in self.index]
    rows = [self.index[t] for t in known]
    return self.matrix[rows].reshape(len(rows), self.dim), unknown

  def save(self, path: pathlib.Path) -> None:
    path.write_bytes(pickle.dumps(dict(zip(self.words, self.matrix)), protocol=4))

  @classmethod
  def load(cls, path: str | pathlib.Path) -> 'WordVectors':
    """Pickle (`.pkl`), word2vec binary (`.bin`) or word2vec text (anything else)."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f'no word-vector file at {path}')
    if path.suffix in ('.pkl', '.pickle'):
      with open(path, 'rb') as f:
        return cls(pickle.load(f))
    if path.suffix == '.bin':
      return cls(_read_word2vec_binary(path))
    return cls(_read_word2vec_text(path))


def _read_word2vec_binary(path: pathlib.Path) -> dict[str, np.ndarray]:
  vectors = {}
  with open(path, 'rb') as f:
    count, dim = map(int, f.readline().split())
    for _ in range(count):
      word = bytearray()
      while (ch := f.read(1)) != b' ':
        if not ch:
          raise ValueError(f'{path}: truncated word2vec file')
        if ch != b'\n':
          word += ch
      vector = np.frombuffer(f.read(4 * dim), dtype='<f4')
      if vector.size != dim:
        raise ValueError(f'{path}: truncated word2vec file')
      vectors[word.decode('utf-8', 'replace')] = vector
  return vectors


def _read_word2vec_text(path: pathlib.Path) -> dict[str, np.ndarray]:
  vectors = {}
  with open(path, encoding='utf-8') as f:
    header = f.readline().split()
    dim = int(header[1]) if len(header) == 2 else None
    if dim is None:  # no header line: the first line is already a vector
      f.seek(0)
    for line in f:
      parts = line.rstrip().split(' ')
      vector = np.asarray(parts[1:], np.float32)
      if dim is not None and vector.size != dim:
        raise ValueError(f'{path}: line for {parts[0]!r} has {vector.size} values, not {dim}')
      vectors[parts[0]] = vector
  return vectors
