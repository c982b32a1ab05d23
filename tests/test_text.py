"""Word-vector tables: the project's .npz format, old pickles, and pickles that run code."""

import pickle

import numpy as np
import pytest

from jaxretrieval.text import WordVectors, tokenize


def small_table(dim=4):
  rng = np.random.default_rng(0)
  return WordVectors({w: rng.normal(size=dim) for w in ['a', 'loud', 'beep', 'café']})


def test_npz_round_trip_keeps_words_and_vectors(tmp_path):
  words = small_table()
  words.save(tmp_path / 'words.npz')
  back = WordVectors.load(tmp_path / 'words.npz')
  assert back.words == words.words and back.matrix.dtype == np.float32
  np.testing.assert_array_equal(back.matrix, words.matrix)
  with np.load(tmp_path / 'words.npz', allow_pickle=False) as f:  # no pickle inside
    assert sorted(f.files) == ['matrix', 'vocabulary']
  with pytest.raises(ValueError, match='written as .npz'):
    words.save(tmp_path / 'words.pkl')


def test_old_pickled_tables_still_load(tmp_path):
  words = small_table()
  (tmp_path / 'old.pkl').write_bytes(pickle.dumps(dict(zip(words.words, words.matrix)),
                                                  protocol=4))
  back = WordVectors.load(tmp_path / 'old.pkl')
  assert back.words == words.words
  np.testing.assert_array_equal(back.matrix, words.matrix)
  vectors, unknown = back.encode('A loud, loud beep!?  zzz')
  assert vectors.shape == (4, 4) and unknown == ['zzz']
  assert tokenize("a dog's bark-like noise") == ['a', "dog's", 'bark-like', 'noise']


class _WritesAFile:
  """A pickle payload: unpickling calls open(target, 'w'), creating the file."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return open, (str(self.target), 'w')


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
  target = tmp_path / 'pwned'
  payload = {'beep': np.ones(4, np.float32), 'x': _WritesAFile(target)}
  (tmp_path / 'word_vectors.pkl').write_bytes(pickle.dumps(payload, protocol=2))
  with pytest.raises(ValueError) as error:
    WordVectors.load(tmp_path / 'word_vectors.pkl')
  message = str(error.value)
  assert '\n' not in message and 'word_vectors.pkl' in message and 'refused' in message
  assert 'builtins.open' in message or 'io.open' in message
  assert not target.exists()


@pytest.mark.parametrize('damage', ['truncate', 'mismatch', 'garbage_pickle'])
def test_damaged_tables_are_refused_naming_the_file(tmp_path, damage):
  words = small_table()
  if damage == 'truncate':
    path = tmp_path / 'words.npz'
    words.save(path)
    path.write_bytes(path.read_bytes()[:100])
  elif damage == 'mismatch':
    path = tmp_path / 'words.npz'
    np.savez(path, matrix=np.zeros((3, 4), np.float32),
             vocabulary=np.frombuffer(b'["a", "b"]', np.uint8))
  else:
    path = tmp_path / 'words.pkl'
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
  with pytest.raises(ValueError, match=str(path).replace('.', r'\.')):
    WordVectors.load(path)


def test_queries_read_unknown_words_as_a_known_case_or_inflection():
  rng = np.random.default_rng(0)
  words = WordVectors({w: rng.normal(size=4) for w in
                       ['a', 'beep', 'beeping', 'chirps', 'Paris', 'NASA', 'dog']})
  assert words.known_form('beeps') == 'beep'  # the first word of the stem, in table order
  assert words.known_form('chirp') == 'chirps' and words.known_form('paris') == 'Paris'
  assert words.known_form('nasa') == 'NASA' and words.known_form('zzz') is None
  read = words.encode_query('A dog BEEPS, chirp zzz beeps')
  assert read.tokens == ['a', 'dog', 'beeps', 'chirp', 'zzz', 'beeps']
  assert read.substitutions == {'beeps': 'beep', 'chirp': 'chirps'} and read.unknown == ['zzz']
  rows = [words.index[w] for w in ('a', 'dog', 'beep', 'chirps', 'beep')]
  np.testing.assert_array_equal(read.vectors, words.matrix[rows])
  # Captions keep the reference's reading: unknown words dropped, nothing substituted.
  vectors, unknown = words.encode('a dog beeps')
  assert len(vectors) == 2 and unknown == ['beeps']
