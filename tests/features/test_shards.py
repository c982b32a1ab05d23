"""Per-item tables written in shards (the Beam pipeline's output) read as one collection."""

import numpy as np
import pytest

from jaxretrieval.data.release_files import ReleaseFileError, shard_name
from jaxretrieval.features.release_writer import (
  Item,
  folder_reader,
  write_items,
  write_release,
  write_tables,
)
from jaxretrieval.text import WordVectors

DIMS = {'logmel': 128, 'vggish': 128}  # the registered widths


def _items():
  rng = np.random.default_rng(0)
  items = []
  for k in range(7):
    experts = {'logmel': rng.normal(size=(k + 1, 128)).astype(np.float32)}
    if k != 3:  # one item lacks vggish
      experts['vggish'] = rng.normal(size=(2, 128)).astype(np.float32)
    items.append(Item(f'clip{k}.wav', experts, [f'a dog {k}'] if k % 2 else []))
  return items


def shard_of(item: str, shards: int) -> int:
  """The Beam pipeline's `shard_of` (imported here, not at collection: Beam takes ~2 s to
  import, paid by every pytest worker that collects this file otherwise)."""
  from jaxretrieval.features import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.shard_of(item, shards)


def _write_sharded(root, items, words, shards=3):
  for shard in range(shards):
    write_items(root, [it for it in items if shard_of(it.id, shards) == shard], DIMS, words,
                True, (shard, shards))
  ids = [it.id for it in items]
  write_tables(root, {'all': ids, 'train': [i for i, it in zip(ids, items) if it.captions]},
               DIMS, {'vggish'}, {}, words)


def test_shards_read_as_the_unsharded_release(tmp_path):
  items, words = _items(), WordVectors({'a': np.ones(300), 'dog': np.zeros(300)})
  assert len({shard_of(it.id, 3) for it in items}) > 1  # spread; an empty shard is written too
  assert [shard_of(it.id, 3) for it in items] == [shard_of(it.id, 3) for it in _items()]
  _write_sharded(tmp_path / 'sharded', items, words)
  assert sorted(p.name for p in (tmp_path / 'sharded' / 'aggregated_vggish').iterdir()) == [
      f'vggish-raw-0000{k}-of-00003.pkl' for k in range(3)]
  write_release(tmp_path / 'whole', items, {'all': [it.id for it in items], 'train': [
      it.id for it in items if it.captions]}, words, DIMS)
  read = {}
  for name in ('sharded', 'whole'):
    root = tmp_path / name
    reader = folder_reader(root, ['all', 'train'])
    read[name] = (dict(reader.audio_examples('all')), dict(reader.examples('train')))
  for split in range(2):
    assert sorted(read['sharded'][split]) == sorted(read['whole'][split])
    for item, example in read['whole'][split].items():
      got = read['sharded'][split][item]
      assert got['available'] == example['available']
      assert got.get('captions') == example.get('captions')
      for e in DIMS:
        np.testing.assert_array_equal(got['experts'][e], example['experts'][e])
  assert not read['sharded'][0]['clip3.wav']['available']['vggish']


def test_a_missing_or_repeated_shard_is_named(tmp_path):
  items, words = _items(), WordVectors({'a': np.ones(300)})
  _write_sharded(tmp_path, items, words)
  reader = lambda: folder_reader(tmp_path, ['all'])
  lost = shard_name(tmp_path / 'aggregated_logmel' / 'logmel-raw.pkl', 1, 3)
  saved = lost.read_bytes()
  lost.unlink()
  with pytest.raises(ReleaseFileError, match=r'logmel-raw-00001-of-00003.pkl: missing \(1 of 3 '
                                             r'shards absent\); run the extraction again'):
    list(reader().audio_examples('all'))
  lost.write_bytes(saved)
  shard_name(tmp_path / 'aggregated_logmel' / 'logmel-raw.pkl', 0, 2).write_bytes(saved)
  with pytest.raises(ReleaseFileError, match=r'shards of 2 different runs \(\[2, 3\] shards\)'):
    list(reader().audio_examples('all'))
  shard_name(tmp_path / 'aggregated_logmel' / 'logmel-raw.pkl', 0, 2).unlink()
  shard_name(tmp_path / 'aggregated_logmel' / 'logmel-raw.pkl', 0, 3).write_bytes(saved)
  with pytest.raises(ReleaseFileError, match=r'custom: aggregated_logmel/logmel-raw.pkl: item '
                                             r'clip\d.wav is in both .*-00001-of-00003.pkl'):
    list(reader().audio_examples('all'))
