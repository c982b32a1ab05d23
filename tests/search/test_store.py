"""Index files: mixed-up or truncated files are refused at load, naming the file."""

import json
import pickle
import shutil

from flax import serialization
import numpy as np
import pytest

from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexFileError, IndexStore
from jaxretrieval.text import WordVectors
from tests.test_text import _WritesAFile


@pytest.fixture
def index(tiny_index, tmp_path):
  """A private copy of the tiny index, free to damage."""
  return shutil.copytree(tiny_index, tmp_path / 'index')


def _drop_last_row(index, name):
  np.save(index / name, np.load(index / name)[:-1])


def _fewer_ids(index, name):
  items = json.loads((index / name).read_text())
  items['ids'] = items['ids'][:-1]
  (index / name).write_text(json.dumps(items))


def _other_model(index, name):
  variables = serialization.msgpack_restore((index / name).read_bytes())
  params = variables['params']
  first = sorted(params)[0]
  while isinstance(params[first], dict):  # down to one array, whose shape changes
    params, first = params[first], sorted(params[first])[0]
  params[first] = np.zeros(np.shape(params[first])[:-1] + (3,), np.float32)
  (index / name).write_bytes(serialization.msgpack_serialize(variables))


def _other_spec(index, name):
  meta = json.loads((index / name).read_text())
  meta['spec']['shared_dim'] = 32  # as if meta.json came from an index of another model
  (index / name).write_text(json.dumps(meta))


def _more_items(index, name):
  meta = json.loads((index / name).read_text())
  meta['num_items'] += 1
  meta['shards'][0]['items'] += 1
  (index / name).write_text(json.dumps(meta))


def _shard_outside(index, name):
  meta = json.loads((index / name).read_text())
  meta['shards'][0]['prefix'] = 'shard-../../'  # would read files outside the index
  (index / name).write_text(json.dumps(meta))


def _counts_disagree(index, name):
  meta = json.loads((index / name).read_text())
  meta['shards'][0]['items'] -= 1
  (index / name).write_text(json.dumps(meta))


def _missing_shard(index, name):
  meta = json.loads((index / name).read_text())
  meta['shards'].append({'prefix': 'shard-0123abcd-', 'items': 1})
  meta['num_items'] += 1
  (index / name).write_text(json.dumps(meta))


def _other_words(index, name):
  WordVectors({'beep': np.ones(50, np.float32)}).save(index / name)


def _availability_values(index, name):
  a = np.load(index / name)
  a[0, 0] = 0.5
  np.save(index / name, a)


def _remove(index, name):
  (index / name).unlink()


def _not_png(index, name):
  data = bytearray((index / name).read_bytes())
  data[:4] = b'GIF8'
  (index / name).write_bytes(bytes(data))


def _thumbnails_flag(index, name):
  meta = json.loads((index / name).read_text())
  meta['shards'][0]['thumbnails'] = 'yes'
  (index / name).write_text(json.dumps(meta))


@pytest.mark.parametrize('name,damage,blamed,message', [
    ('thumbnails.bin', _remove, 'meta.json', "missing: ['thumbnails.bin']"),
    ('thumbnails.npy', _drop_last_row, 'thumbnails.npy', 'expected 17'),
    ('thumbnails.bin', _not_png, 'thumbnails.bin', 'PNG thumbnails'),
    ('meta.json', _thumbnails_flag, 'meta.json', 'expected true or false'),
    ('embeddings.npy', _drop_last_row, 'embeddings.npy', 'different indexes'),
    ('availability.npy', _drop_last_row, 'availability.npy', 'different indexes'),
    ('availability.npy', _availability_values, 'availability.npy', 'other than 0 and 1'),
    ('items.json', _fewer_ids, 'items.json', 'expected 16 ids'),
    ('model.msgpack', _other_model, 'model.msgpack', 'different indexes'),
    ('meta.json', _other_spec, 'embeddings.npy', 'different indexes'),
    ('meta.json', _more_items, 'embeddings.npy', '(17, 128)'),
    ('meta.json', _shard_outside, 'meta.json', 'shards named shard-<hex>-'),
    ('meta.json', _counts_disagree, 'meta.json', 'add up to num_items'),
    ('meta.json', _missing_shard, 'meta.json', "missing: ['shard-0123abcd-embeddings.npy'"),
    ('word_vectors.npz', _other_words, 'word_vectors.npz', '50-d word vectors'),
])
def test_files_of_different_indexes_are_refused(index, name, damage, blamed, message):
  damage(index, name)
  with pytest.raises(IndexFileError) as error:
    IndexStore.load(index)
  text = str(error.value)
  assert text.startswith(str(index / blamed)) and message in text and '\n' not in text


@pytest.mark.parametrize('name', ['meta.json', 'embeddings.npy', 'availability.npy',
                                  'items.json', 'model.msgpack', 'word_vectors.npz',
                                  'thumbnails.npy', 'thumbnails.bin'])
def test_truncated_files_are_named(index, name):
  path = index / name
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(IndexFileError) as error:
    IndexStore.load(index)
  assert str(error.value).startswith(f'{path}: ') and 'truncated' in str(error.value)


def test_an_index_without_thumbnails_still_loads(index):
  meta = json.loads((index / 'meta.json').read_text())
  del meta['shards'][0]['thumbnails']  # as written before thumbnails, or without audio
  (index / 'meta.json').write_text(json.dumps(meta))
  for name in ('thumbnails.npy', 'thumbnails.bin'):
    (index / name).unlink()
  store = IndexStore.load(index)
  assert all(store.thumbnail(row) == b'' for row in range(len(store)))


def test_an_index_with_an_old_pickled_word_table_still_loads(index):
  words = WordVectors.load(index / 'word_vectors.npz')
  (index / 'word_vectors.npz').unlink()
  (index / 'word_vectors.pkl').write_bytes(pickle.dumps(dict(zip(words.words, words.matrix))))
  store = IndexStore.load(index)
  assert store.words.words == words.words
  assert len(SearchEngine(store).search('a loud beep', k=3).hits) == 3


def test_an_index_with_a_code_running_word_table_is_refused(index):
  (index / 'word_vectors.npz').unlink()
  target = index / 'pwned'
  (index / 'word_vectors.pkl').write_bytes(pickle.dumps({'x': _WritesAFile(target)}))
  with pytest.raises(IndexFileError, match=r'word_vectors\.pkl: refused to load'):
    IndexStore.load(index)
  assert not target.exists()


def test_shard_rows_read_as_one_array():
  from jaxretrieval.search.store import ShardRows
  parts = [np.arange(6.0).reshape(3, 2), np.arange(6.0, 8.0).reshape(1, 2),
           np.arange(8.0, 14.0).reshape(3, 2)]
  whole = np.concatenate(parts)
  rows = ShardRows(parts)
  assert rows.shape == (7, 2) and len(rows) == 7 and rows.dtype == whole.dtype
  np.testing.assert_array_equal(np.asarray(rows), whole)
  for key in (slice(0, 7), slice(2, 5), slice(3, 4), slice(5, 100), slice(4, 2)):
    np.testing.assert_array_equal(rows[key], whole[key])
  for row in (0, 2, 3, 4, 6, -1):
    np.testing.assert_array_equal(rows[row], whole[row])
  np.testing.assert_array_equal(rows[[6, 0, 3]], whole[[6, 0, 3]])
  with pytest.raises(IndexError):
    rows[7]  # pylint: disable=pointless-statement
