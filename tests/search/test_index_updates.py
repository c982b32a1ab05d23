"""A growing collection: --add embeds only new items, --remove drops some; an interrupted
change leaves the index as it was."""

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxretrieval.search import build, thumbnails
from jaxretrieval.search.build import add_to_index, build_index, remove_from_index
from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.store import IndexStore
from tests import in_process
from tests.search.test_api import features_folder, synthcaps_words


def _by_id(store):
  return {i: (np.asarray(store.embeddings[r]), store.availability[r], store.audio_paths[r])
          for r, i in enumerate(store.ids)}


def test_add_then_remove_equals_a_rebuild(tiny_workdir, tmp_path, monkeypatch):
  words = str(synthcaps_words(tiny_workdir))
  features_folder(tmp_path / 'first', ['a1', 'a2', 'a3'])
  features_folder(tmp_path / 'second', ['b1', 'b2'])
  features_folder(tmp_path / 'kept', ['a1', 'a3', 'b2'])
  index = tmp_path / 'index'
  build_index(str(tiny_workdir), str(index), data=str(tmp_path / 'first'), word_vectors=words)
  embedded = []
  items = build.Embedder.items
  monkeypatch.setattr(build.Embedder, 'items',
                      lambda self, v, data: embedded.append(list(data.ids)) or items(self, v, data))
  assert add_to_index(str(index), str(tmp_path / 'second')) == 2
  assert embedded == [['b1', 'b2']]  # only the new items went through the audio tower
  grown = IndexStore.load(index)
  assert grown.ids == ['a1', 'a2', 'a3', 'b1', 'b2'] and len(grown.shards) == 2
  assert all(isinstance(p, np.memmap) for p in grown.embeddings.parts)  # not copied into one
  assert str((tmp_path / 'second').resolve()) in grown.audio_roots
  with pytest.raises(ValueError, match='already in'):
    add_to_index(str(index), str(tmp_path / 'second'))
  assert remove_from_index(str(index), ['a2', 'b1']) == 3
  changed = IndexStore.load(index)
  build_index(str(tiny_workdir), str(tmp_path / 'rebuilt'), data=str(tmp_path / 'kept'),
              word_vectors=words)
  rebuilt = IndexStore.load(tmp_path / 'rebuilt')
  assert sorted(changed.ids) == sorted(rebuilt.ids) == ['a1', 'a3', 'b2']
  want, got = _by_id(rebuilt), _by_id(changed)
  for i in want:
    np.testing.assert_allclose(got[i][0], want[i][0], atol=1e-5)
    np.testing.assert_array_equal(got[i][1], want[i][1])
    assert got[i][2].endswith(f'{i}.wav')
  hits = lambda store: [(h.id, round(h.score, 4))
                        for h in SearchEngine(store).search('a loud beep', k=3).hits]
  assert hits(changed) == hits(rebuilt)
  # Only the files of listed shards remain.
  listed = {s['prefix'] + f for s in changed.shards
            for f in ('embeddings.npy', 'availability.npy', 'items.json')}
  on_disk = {p.name for p in index.iterdir() if p.suffix in ('.npy', '.json')} - {'meta.json'}
  assert on_disk == listed


def test_add_and_remove_keep_each_item_s_thumbnail(tiny_workdir, tmp_path, caplog):
  """Added items get thumbnails, removed ones lose them, items without audio have none, and
  the thumbnail files on disk are exactly those of the shards meta.json lists."""
  words = str(synthcaps_words(tiny_workdir))
  features_folder(tmp_path / 'first', ['a1', 'a2', 'a3'], audio=('a1', 'a2', 'a3'))
  features_folder(tmp_path / 'second', ['b1', 'b2'], audio=('b1',))
  features_folder(tmp_path / 'silent', ['c1'])  # no audio files at all
  index = tmp_path / 'index'
  build_index(str(tiny_workdir), str(index), data=str(tmp_path / 'first'), word_vectors=words)
  with caplog.at_level(logging.INFO):
    add_to_index(str(index), str(tmp_path / 'second'))
  logged = '\n'.join(r.getMessage() for r in caplog.records)
  for step in ('Reading the features of', 'Reading durations and drawing thumbnails'):
    assert re.search(step + r'.*: 2/2 items, [0-9.]+ items/s', logged), logged
  assert re.search(r'Embedded 2 items in [0-9.]+ s \([0-9.]+ items/s\)', logged)
  add_to_index(str(index), str(tmp_path / 'silent'))

  def check(store):
    for row, path in enumerate(store.audio_paths):
      assert store.thumbnail(row) == thumbnails.render(path)
    listed = {s['prefix'] + f for s in store.shards if s.get('thumbnails')
              for f in ('thumbnails.npy', 'thumbnails.bin')}
    assert {p.name for p in index.glob('*thumbnails*')} == listed
    return {i: store.thumbnail(r) for r, i in enumerate(store.ids)}
  grown = check(IndexStore.load(index))
  assert [bool(grown[i]) for i in ('a1', 'a2', 'a3', 'b1', 'b2', 'c1')] == [1, 1, 1, 1, 0, 0]
  assert len(set(grown.values())) == 5  # four different tones, and b''
  assert [s.get('thumbnails', False) for s in IndexStore.load(index).shards] == [1, 1, 0]
  remove_from_index(str(index), ['a2', 'b1'])
  changed = check(IndexStore.load(index))
  assert changed == {i: grown[i] for i in ('a1', 'a3', 'b2', 'c1')}
  assert [s.get('thumbnails', False) for s in IndexStore.load(index).shards] == [1, 0, 0]
  remove_from_index(str(index), ['a1', 'a3'])  # the last items with thumbnails go
  check(IndexStore.load(index))
  assert not list(index.glob('*thumbnails*'))


def test_long_work_reports_progress_with_rate_and_eta(caplog):
  with caplog.at_level(logging.INFO):
    assert list(build.progress(iter('abc'), 3, 'Drawing', every_s=0.0)) == ['a', 'b', 'c']
    assert list(build.progress(iter('xyz'), 3, 'Reading', every_s=3600.0)) == ['x', 'y', 'z']
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 4, lines  # each item at every_s=0, only the end within the hour
  for i, line in enumerate(lines[:2], 1):
    assert re.fullmatch(rf'Drawing: {i}/3 items, [0-9.]+ items/s, ETA [0-9]+ s', line), line
  assert re.fullmatch(r'Drawing: 3/3 items, [0-9.]+ items/s', lines[2])
  assert re.fullmatch(r'Reading: 3/3 items, [0-9.]+ items/s', lines[3])


def test_an_interrupted_change_leaves_the_index_as_it_was(tiny_workdir, tmp_path, monkeypatch):
  words = str(synthcaps_words(tiny_workdir))
  features_folder(tmp_path / 'first', ['a1', 'a2'])
  features_folder(tmp_path / 'second', ['b1'])
  index = tmp_path / 'index'
  build_index(str(tiny_workdir), str(index), data=str(tmp_path / 'first'), word_vectors=words)
  before = (index / 'meta.json').read_text()

  def killed(directory, manifest):
    raise KeyboardInterrupt  # as if stopped after the new shard, before the manifest swap
  monkeypatch.setattr(build, 'commit', killed)
  for change in (lambda: add_to_index(str(index), str(tmp_path / 'second')),
                 lambda: remove_from_index(str(index), ['a1'])):
    with pytest.raises(KeyboardInterrupt):
      change()
    assert (index / 'meta.json').read_text() == before
    assert IndexStore.load(index).ids == ['a1', 'a2']
  assert len(list(index.glob('shard-*'))) == 6  # two shards of three files, not listed
  monkeypatch.undo()
  add_to_index(str(index), str(tmp_path / 'second'))  # the next change removes the strays
  assert len(list(index.glob('shard-*'))) == 3 and IndexStore.load(index).ids[-1] == 'b1'


def test_remove_from_the_command_line(tiny_index, tmp_path):
  import shutil
  index = shutil.copytree(tiny_index, tmp_path / 'index')
  ids = IndexStore.load(index).ids
  (tmp_path / 'ids.txt').write_text(f'{ids[1]}\n{ids[2]}\n')
  out = in_process.run_module('jaxretrieval.search.index', [
      f'--remove={ids[0]}', f'--remove=@{tmp_path / "ids.txt"}', f'--to={index}'])
  assert out.returncode == 0 and '13 items left' in out.stdout, out.stderr
  assert IndexStore.load(index).ids == ids[3:]
  # A real `python -m` process: exit status 1 and a one-line reason, no traceback.
  unknown = subprocess.run([sys.executable, '-m', 'jaxretrieval.search.index', '--remove=nope',
                            f'--to={index}'], capture_output=True, text=True)
  assert unknown.returncode == 1 and 'not in' in unknown.stderr and 'nope' in unknown.stderr
  assert 'Traceback' not in unknown.stderr
  assert json.loads((index / 'meta.json').read_text())['num_items'] == 13
