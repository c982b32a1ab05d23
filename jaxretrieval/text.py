"""Captions to word vectors: tokenisation and word-vector tables (REFERENCE §1.3).

The reference maps each caption token to its word2vec (GoogleNews, 300-d) vector and drops
words without one. `WordVectors` reads a table in the project's own format (`.npz`: a float32
matrix and a JSON vocabulary, no pickle), as a pickled `dict[str, vector]` (older SynthCaps
and features folders; read through the allow-listing release unpickler, so no file can run
code) or in word2vec's binary or text format (what gensim's
`KeyedVectors.save_word2vec_format` and the GoogleNews release use).

Captions are encoded as in the reference (`encode`: unknown words dropped). Search queries
(`encode_query`) also map an unknown word to a known form: another case of it (word2vec is
case-sensitive), else the vocabulary word with the same Snowball stem ("beeps" -> "beep"),
and report each substitution.
"""

import dataclasses
import functools
import json
import pathlib
import re
import zipfile

import numpy as np

from jaxretrieval.data.release_files import ReleaseFileError, load_pickle

_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def tokenize(caption: str) -> list[str]:
  """Lower-cased word tokens; punctuation dropped, inner hyphens and apostrophes kept."""
  return _TOKEN.findall(caption.lower())


@functools.cache
def _stemmer():
  """NLTK's English Snowball stemmer, imported on first use: `import nltk` loads SciPy's
  statistics (about 2 s), which a process that only encodes captions does not need."""
  from nltk.stem.snowball import SnowballStemmer  # pylint: disable=g-import-not-at-top
  return SnowballStemmer('english')


@dataclasses.dataclass
class QueryWords:
  """A query's tokens, the vectors of those with a vocabulary word, the tokens without one
  (`unknown`) and each token read as another vocabulary word (`substitutions`)."""
  tokens: list[str]
  vectors: np.ndarray  # [tokens with a vocabulary word, dim], in query order
  unknown: list[str]
  substitutions: dict[str, str]


class WordVectors:
  """A word -> vector table."""

  def __init__(self, vectors: dict[str, np.ndarray]):
    if not vectors:
      raise ValueError('empty word-vector table')
    self.words = list(vectors)
    self.index = {w: i for i, w in enumerate(self.words)}
    self.matrix = np.stack([np.asarray(vectors[w], np.float32) for w in self.words])
    self._stems = None

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

  def encode_query(self, query: str) -> 'QueryWords':
    """A search query's tokens, each mapped to its vocabulary word where there is one."""
    tokens = tokenize(query)
    found = {t: self.known_form(t) for t in dict.fromkeys(tokens)}
    rows = [self.index[found[t]] for t in tokens if found[t] is not None]
    return QueryWords(tokens, self.matrix[rows].reshape(len(rows), self.dim),
                      [t for t in found if found[t] is None],
                      {t: w for t, w in found.items() if w is not None and w != t})

  def known_form(self, token: str) -> str | None:
    """The vocabulary word standing for a query token: the token itself, else its
    capitalised or upper-case form, else the first vocabulary word (in table order: by
    frequency for word2vec) with the same Snowball stem; None when there is none."""
    for form in (token, token.capitalize(), token.upper()):
      if form in self.index:
        return form
    return self.stems().get(_stemmer().stem(token))

  def stems(self) -> dict[str, str]:
    """Snowball stem -> first vocabulary word with that stem, over the words a query can
    hold (lower-case tokens). Built on first use: about 30 µs a word, so a second for
    SynthCaps' table and tens of seconds for word2vec's (the server builds it at start)."""
    if self._stems is None:
      stems, stem = {}, _stemmer().stem
      for word in self.words:
        if _TOKEN.fullmatch(word):
          stems.setdefault(stem(word), word)
      self._stems = stems
    return self._stems

  def save(self, path: str | pathlib.Path) -> None:
    """Writes the table as `.npz`: `matrix` `[words, dim]` float32 and `vocabulary`, the
    words as UTF-8 JSON (a byte array, so reading it needs no pickle)."""
    path = pathlib.Path(path)
    if path.suffix != '.npz':
      raise ValueError(f'{path}: word-vector tables are written as .npz')
    vocabulary = np.frombuffer(json.dumps(self.words).encode('utf-8'), np.uint8)
    with open(path, 'wb') as f:  # a file object: np.savez would append .npz to other names
      np.savez(f, matrix=self.matrix.astype(np.float32), vocabulary=vocabulary)

  @classmethod
  def load(cls, path: str | pathlib.Path) -> 'WordVectors':
    """`.npz` (this project's format), pickle (`.pkl`, allow-listed types only), word2vec
    binary (`.bin`) or word2vec text (anything else)."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f'no word-vector file at {path}')
    if path.suffix == '.npz':
      return cls(_read_npz(path))
    if path.suffix in ('.pkl', '.pickle'):
      return cls(_read_pickle(path))
    if path.suffix == '.bin':
      return cls(_read_word2vec_binary(path))
    return cls(_read_word2vec_text(path))


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The table written by `WordVectors.save`, validated."""
  try:
    with np.load(path, allow_pickle=False) as f:
      matrix, vocabulary = f['matrix'], f['vocabulary']
    words = json.loads(vocabulary.tobytes().decode('utf-8'))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f'{path}: not a readable word-vector table ({type(e).__name__}: {e}); '
                     'the file is truncated or corrupt, write it again') from e
  if (matrix.ndim != 2 or matrix.dtype != np.float32 or not isinstance(words, list)
      or len(words) != len(matrix) or not all(isinstance(w, str) for w in words)
      or len(set(words)) != len(words)):
    raise ValueError(f'{path}: expected a float32 [words, dim] matrix and as many distinct '
                     f'words; found a {matrix.dtype} {matrix.shape} matrix and '
                     f'{len(words) if isinstance(words, list) else type(words).__name__} words')
  return dict(zip(words, matrix))


def _read_pickle(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A pickled `dict[str, vector]`, through the allow-listing release unpickler."""
  try:
    table = load_pickle(path)
  except ReleaseFileError as e:
    raise ValueError(f'{path}: refused to load: {e}') from e
  except Exception as e:  # pickle, EOF and decoding errors of a truncated or corrupt file
    raise ValueError(f'{path}: not a readable pickle ({type(e).__name__}: {e})') from e
  if not isinstance(table, dict) or not all(
      isinstance(w, str) and np.ndim(v) == 1 for w, v in table.items()):
    raise ValueError(f'{path}: expected a pickled dict of word -> vector, found '
                     f'{type(table).__name__}')
  return table


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
