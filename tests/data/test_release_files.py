"""Release file readers: the allow-listing unpickler, caption text, what counts as missing."""

import pickle

import numpy as np
import pytest

from jaxretrieval.data.release_files import (
  UnexpectedPickleContent,
  caption_text,
  is_missing,
  load_pickle,
)


def test_protocol2_pickle_with_bytes_and_zero_size_arrays_loads(tmp_path):
  table = {'empty': np.zeros((0, 128), np.float32), 'raw': b'', 'text': b'\x00\xff',
           'frames': np.arange(6, dtype=np.float16).reshape(3, 2)}
  (tmp_path / 'a.pkl').write_bytes(pickle.dumps(table, protocol=2))
  loaded = load_pickle(tmp_path / 'a.pkl')
  assert loaded['raw'] == b'' and loaded['text'] == b'\x00\xff'
  assert loaded['empty'].shape == (0, 128)
  np.testing.assert_array_equal(loaded['frames'], table['frames'])


def test_unpickler_still_refuses_code(tmp_path):
  class Payload:
    def __reduce__(self):
      return (print, ('ran',))
  (tmp_path / 'bad.pkl').write_bytes(pickle.dumps({'x': Payload()}, protocol=2))
  with pytest.raises(UnexpectedPickleContent, match='builtins.print'):
    load_pickle(tmp_path / 'bad.pkl')


def test_caption_text_decodes_bytes_tokens_as_utf8():
  assert caption_text(['a', 'dog']) == 'a dog'
  assert caption_text('already text') == 'already text'
  assert caption_text([b'caf\xc3\xa9', np.str_('bell')]) == 'café bell'
  with pytest.raises(UnicodeDecodeError):
    caption_text([b'\xff\xfe'])


@pytest.mark.parametrize('value, missing', [
    (None, True), (float('nan'), True), (np.full(4, np.nan, np.float16), True),
    (np.zeros((0, 128), np.float32), True), (np.zeros((1, 128), np.float32), False),
    (np.array([[np.nan, 1.0]]), False),  # partly NaN: present (and refused by the reader)
])
def test_what_counts_as_missing(value, missing):
  assert is_missing(value) == missing
