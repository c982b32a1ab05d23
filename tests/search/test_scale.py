"""Search at scale: a build streamed shard by shard, float16 shards, the index split over
several devices, and the Qdrant export, each against the plain in-memory result."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxretrieval.search import export
from jaxretrieval.search.build import build_index
from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexFileError, IndexStore, ShardRows

QUERIES = ['a loud beep followed by hissing', 'a bell rings', 'quiet footsteps']


@pytest.fixture(scope='module')
def streamed_index(tiny_workdir, tmp_path_factory):
  """The tiny index built 5 items at a time: 4 shards (5, 5, 5, 1 items)."""
  out = tmp_path_factory.mktemp('streamed')
  build_index(str(tiny_workdir), str(out), split='test', shard_items=5)
  return out


def _ranking(engine, k=16):
  return [([h.id for h in r.hits], np.array([h.score for h in r.hits]))
          for r in engine.search_batch(QUERIES, k)]


def _with_missing_experts(store: IndexStore) -> IndexStore:
  """`store` held in memory, with items 3 and 9 lacking the first expert, 12 the second."""
  store.embeddings = np.array(store.embeddings)
  store.availability = store.availability.copy()
  width = store.widths[0]
  for row, expert in ((3, 0), (9, 0), (12, 1)):
    store.availability[row, expert] = 0.0
    store.embeddings[row, expert * width:(expert + 1) * width] = 0.0
  return store


def test_streamed_build_equals_one_shot_build(tiny_index, streamed_index):
  whole, streamed = IndexStore.load(tiny_index), IndexStore.load(streamed_index)
  assert [s['items'] for s in streamed.shards] == [5, 5, 5, 1]
  assert isinstance(streamed.embeddings, ShardRows)
  assert all(isinstance(p, np.memmap) for p in streamed.embeddings.parts)
  assert streamed.ids == whole.ids and streamed.audio_paths == whole.audio_paths
  assert streamed.captions == whole.captions and streamed.durations == whole.durations
  np.testing.assert_array_equal(streamed.availability, whole.availability)
  np.testing.assert_allclose(np.asarray(streamed.embeddings), whole.embeddings, atol=1e-6)
  for (ids, scores), (want_ids, want_scores) in zip(_ranking(SearchEngine(streamed, chunk=4)),
                                                    _ranking(SearchEngine(whole))):
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_float16_index_ranks_as_float32(tiny_workdir, tiny_index, tmp_path):
  build_index(str(tiny_workdir), str(tmp_path / 'half'), split='test', dtype='float16',
              shard_items=6)
  half, full = IndexStore.load(tmp_path / 'half'), IndexStore.load(tiny_index)
  assert half.embeddings.dtype == np.float16
  for (ids, scores), (want_ids, want_scores) in zip(_ranking(SearchEngine(half)),
                                                    _ranking(SearchEngine(full))):
    by_id = dict(zip(ids, scores))  # same items, scores within float16 rounding
    np.testing.assert_allclose([by_id[i] for i in want_ids], want_scores, atol=2e-3)
  # Well-separated scores: item j's cosine with the query is 1 - 0.06 j for every expert.
  engine = SearchEngine(full)
  text = engine.encode([QUERIES[0]]).text[0]
  rng = np.random.default_rng(0)
  embeddings = np.zeros((16, len(text)), np.float32)
  cos = 1 - 0.06 * rng.permutation(16)
  for m in range(len(full.widths)):
    block = slice(engine.bounds[m], engine.bounds[m + 1])
    t = text[block] / np.linalg.norm(text[block])
    other = rng.standard_normal((16, len(t)))
    other -= np.outer(other @ t, t)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    embeddings[:, block] = cos[:, None] * t + np.sqrt(1 - cos[:, None] ** 2) * other
  full.embeddings = embeddings
  full.save(tmp_path / 'separated32')
  full.embeddings = embeddings.astype(np.float16)
  full.save(tmp_path / 'separated16')
  ids32, scores32 = _ranking(SearchEngine(IndexStore.load(tmp_path / 'separated32')))[0]
  ids16, scores16 = _ranking(SearchEngine(IndexStore.load(tmp_path / 'separated16')))[0]
  assert ids16 == ids32
  np.testing.assert_allclose(scores32, 1 - 0.06 * np.arange(16), atol=1e-5)
  np.testing.assert_allclose(scores16, scores32, atol=2e-3)


_SHARDED = """
import json, sys
import jax
import numpy as np
from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexStore
from tests.search.test_scale import QUERIES, _ranking, _with_missing_experts
assert jax.local_device_count() == 8, jax.local_devices()
out = {}
for name, store in (('streamed', IndexStore.load(sys.argv[1])),
                    ('missing', _with_missing_experts(IndexStore.load(sys.argv[1])))):
  for devices in (8, 1):
    engine = SearchEngine(store, chunk=6, devices=jax.local_devices()[:devices])
    assert engine.chunk == (8 if devices == 8 else 6)
    for k in (3, 16):
      out[f'{name} {devices} {k}'] = [(ids, scores.tolist()) for ids, scores in
                                      _ranking(engine, k)]
print(json.dumps(out))
"""


def test_eight_devices_rank_as_one(streamed_index):
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
             '--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  root = pathlib.Path(__file__).parents[2]
  run = subprocess.run([sys.executable, '-c', _SHARDED, str(streamed_index)], env=env,
                       cwd=root, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  for name in ('streamed', 'missing'):
    for k in (3, 16):
      eight, one = out[f'{name} 8 {k}'], out[f'{name} 1 {k}']
      assert [ids for ids, _ in eight] == [ids for ids, _ in one]
      assert all(len(ids) == k for ids, _ in eight)
      np.testing.assert_allclose([s for _, s in eight], [s for _, s in one], atol=1e-6)


def test_qdrant_export_ranks_as_the_engine(tiny_index):
  store = _with_missing_experts(IndexStore.load(tiny_index))
  engine = SearchEngine(store)
  client = export.qdrant_client(':memory:')
  names = {'1' * len(store.widths): 13, '0' + '1' * (len(store.widths) - 1): 2,
           '1' * (len(store.widths) - 1) + '0': 1}
  assert export.export_qdrant(store, client, 'tiny') == {f'tiny-{p}': n
                                                         for p, n in names.items()}
  for k in (4, 16):
    remote = export.search_qdrant(engine, client, 'tiny', QUERIES, k)
    for hits, (ids, scores) in zip(remote, _ranking(engine, k)):
      assert [h.id for h in hits] == ids
      assert [h.row for h in hits] == [store.ids.index(i) for i in ids]
      np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)
  # The missing-expert items are ranked among the others.
  ranked = [h.id for h in export.search_qdrant(engine, client, 'tiny', QUERIES[:1], 16)[0]]
  assert {store.ids[r] for r in (3, 9, 12)} <= set(ranked)


def test_missing_qdrant_client_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'qdrant_client', None)
  with pytest.raises(ImportError, match=r'pip install qdrant-client==\d'):
    export.qdrant_client(':memory:')


@pytest.fixture
def streamed_copy(streamed_index, tmp_path):
  return shutil.copytree(streamed_index, tmp_path / 'index')


def test_a_shard_of_another_dtype_is_refused(streamed_copy):
  shard = json.loads((streamed_copy / 'meta.json').read_text())['shards'][2]['prefix']
  path = streamed_copy / f'{shard}embeddings.npy'
  np.save(path, np.load(path).astype(np.float16))
  with pytest.raises(IndexFileError, match=f'{path}: float16 embeddings, but the first shard '
                     'holds float32'):
    IndexStore.load(streamed_copy)


def test_a_truncated_later_shard_is_named(streamed_copy):
  shard = json.loads((streamed_copy / 'meta.json').read_text())['shards'][1]['prefix']
  path = streamed_copy / f'{shard}embeddings.npy'
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(IndexFileError, match=f'{path}: cannot read'):
    IndexStore.load(streamed_copy)
