"""Search: index building, query encoding and top-k against a direct computation."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxretrieval.models import RetrievalModel, mixture_similarity
from jaxretrieval.search.engine import QueryError, SearchEngine
from jaxretrieval.search.store import IndexStore
from tests import in_process


def test_index_holds_every_item_with_paths(tiny_index):
  store = IndexStore.load(tiny_index)
  assert len(store) == 16 and store.embeddings.shape == (16, 2 * 64)
  assert all(p.endswith(f'{i}.wav') for i, p in zip(store.ids, store.audio_paths))
  norms = np.linalg.norm(store.embeddings.reshape(16, 2, 64), axis=2)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)
  meta = json.loads((tiny_index / 'meta.json').read_text())
  assert meta['provenance']['split'] == 'test' and meta['text_tokens'] == 32


@pytest.mark.parametrize('chunk', [5, 16])
def test_top_k_equals_direct_mixture_similarity(tiny_index, chunk):
  store = IndexStore.load(tiny_index)
  # One item misses an expert: its weights renormalise over the other.
  store.availability = store.availability.copy()
  store.availability[3, 0] = 0.0
  store.embeddings = np.array(store.embeddings)
  store.embeddings[3, :64] = 0.0
  engine = SearchEngine(store, chunk=chunk)
  query = 'a loud beep followed by hissing'
  result = engine.search(query, k=16)
  vectors, _ = store.words.encode(query)
  text = np.zeros((1, store.text_tokens, 300), np.float32)
  text[0, :len(vectors)] = vectors
  model = RetrievalModel(store.spec)
  emb, weights = model.apply(store.variables, jnp.asarray(text), False,
                             method=RetrievalModel.encode_text)
  audio = {e: jnp.asarray(store.embeddings[:, i * 64:(i + 1) * 64]) for i, e in
           enumerate(store.spec.expert_names)}
  want = np.asarray(mixture_similarity(emb, weights, audio, jnp.asarray(store.availability),
                                       store.spec.expert_names))[0]
  order = np.argsort(-want, kind='stable')
  assert [h.row for h in result.hits] == list(order)
  np.testing.assert_allclose([h.score for h in result.hits], want[order], atol=1e-5)
  for hit in result.hits:
    parts = [hit.weights[e] * c for e, c in hit.cosines.items() if c is not None]
    assert sum(parts) == pytest.approx(hit.score, abs=1e-5)
  assert result.hits[[h.row for h in result.hits].index(3)].cosines['logmel'] is None


def _direct_text(store, vectors, length):
  """Query embeddings of word vectors zero-padded to `length`, by the model directly."""
  text = np.zeros((1, length, 300), np.float32)
  text[0, :len(vectors)] = vectors
  emb, weights = RetrievalModel(store.spec).apply(store.variables, jnp.asarray(text), False,
                                                  method=RetrievalModel.encode_text)
  return np.concatenate([np.asarray(emb[e]) for e in store.spec.expert_names], 1), weights


def test_a_long_query_is_read_whole(tiny_index):
  """40 x beep + 40 x siren: all 80 words reach the text tower (no cut at 32 tokens)."""
  store = IndexStore.load(tiny_index)
  engine = SearchEngine(store)
  query = 'beep ' * 40 + 'siren ' * 40
  encoded = engine.encode([query])
  vectors = store.words.encode(query)[0]
  whole, _ = _direct_text(store, vectors, 96)  # padded to the next multiple of 32
  cut, _ = _direct_text(store, vectors[:32], 32)
  np.testing.assert_allclose(encoded.text[0], whole[0], atol=1e-5)
  assert np.abs(encoded.text[0] - cut[0]).max() > 1e-3
  short, _ = _direct_text(store, store.words.encode('a loud beep')[0], 32)  # as in training
  np.testing.assert_allclose(engine.encode(['a loud beep']).text[0], short[0], atol=1e-5)


def test_unknown_inflections_are_read_as_vocabulary_words(tiny_index):
  engine = SearchEngine(IndexStore.load(tiny_index))
  words = engine.store.words
  assert 'beep' in words and 'beeps' not in words
  result = engine.search('a loud BEEPS zzyzx', k=3)
  assert result.substitutions == {'beeps': 'beep'} and result.unknown == ['zzyzx']
  assert [h.id for h in result.hits] == [h.id for h in engine.search('a loud beep', k=3).hits]


def test_queries_report_unknown_words_and_reject_unsearchable_ones(tiny_index):
  engine = SearchEngine(IndexStore.load(tiny_index))
  result = engine.search('a quiet zzyzx hum', k=3)
  assert result.unknown == ['zzyzx'] and len(result.hits) == 3
  assert sum(result.weights.values()) == pytest.approx(1.0, abs=1e-5)
  with pytest.raises(QueryError, match='empty query'):
    engine.search('  ?! ')
  with pytest.raises(QueryError, match='no word of the query'):
    engine.search('qwerty asdfgh')
  with pytest.raises(QueryError, match='at most 500'):
    engine.search('beep ' * 200)
  assert len(engine.search('beep', k=1000).hits) == 16  # k is capped at the index size


def test_search_command_line(tiny_index):
  """The command's output, run in this process (`tests.in_process`); the next test starts a
  real one."""
  run = lambda *args: in_process.run_module('jaxretrieval.search.query',
                                            [f'--index={tiny_index}', *args])
  out = run('-k', '3', 'a', 'high', 'whistles', 'blorp')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert 'unknown words (ignored): blorp' in out.stdout
  assert 'read as: whistles -> whistle' in out.stdout
  ranked = [l for l in lines if l.lstrip()[:1].isdigit()]
  assert len(ranked) == 3 and ranked[0].split()[0] == '1' and '.wav' in ranked[0]
  scores = [float(l.split()[1]) for l in ranked]
  assert scores == sorted(scores, reverse=True)
  empty = run('')
  assert empty.returncode == 2 and 'empty query' in empty.stderr


def test_search_command_line_names_a_damaged_index_file(tiny_index, tmp_path):
  """A real `python -m` process: exit status 2 and a one-line reason, no traceback."""
  index = shutil.copytree(tiny_index, tmp_path / 'index')
  (index / 'items.json').write_text('{"ids": [')
  out = subprocess.run([sys.executable, '-m', 'jaxretrieval.search.query', f'--index={index}',
                        'beep'], capture_output=True, text=True)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert f'cannot load the index: {index / "items.json"}: cannot read' in out.stderr


def test_index_a_folder_of_own_audio(tiny_workdir, tmp_path):
  """Own audio -> features -> index -> search, with the SynthCaps-trained model. The commands
  run in this process (`tests.in_process`): what is checked is their output and messages."""
  import soundfile

  from jaxretrieval.data.synthcaps import sounds
  rng = np.random.default_rng(0)
  (tmp_path / 'audio').mkdir()
  for kind in ('beep', 'hiss', 'bell'):
    clip = sounds.Clip((sounds.random_event(rng, kind),), 'single', False)
    soundfile.write(tmp_path / 'audio' / f'{kind}.wav', sounds.render_clip(clip, rng), 16000)
  features = in_process.run_module('jaxretrieval.features', [
      f'--audio_dir={tmp_path / "audio"}', f'--out={tmp_path / "feats"}', '--workers=1'])
  assert features.returncode == 0, features.stderr
  data_dir = pathlib.Path(json.loads((tiny_workdir / 'config.json').read_text())['data_dir'])
  words = next(data_dir.glob('downloads/synthcaps-tiny-*/word_vectors.npz'))
  index = lambda *args: in_process.run_module(
      'jaxretrieval.search.index',
      [f'--workdir={tiny_workdir}', f'--data={tmp_path / "feats"}', f'--out={tmp_path / "index"}',
       f'--word_vectors={words}', *args])
  refused = index()  # the audio lies outside the features folder, the default root
  assert refused.returncode != 0 and '--audio_root' in refused.stderr
  built = index(f'--audio_root={tmp_path / "audio"}')
  assert built.returncode == 0, built.stderr
  store = IndexStore.load(tmp_path / 'index')
  assert sorted(store.ids) == ['beep.wav', 'bell.wav', 'hiss.wav']
  assert store.audio_roots == [str((tmp_path / 'audio').resolve())]
  assert all(store.audio_file(row) for row in range(3))
  assert len(SearchEngine(store).search('a bell', k=3).hits) == 3
  no_table = in_process.run_module(
      'jaxretrieval.search.index',
      [f'--workdir={tiny_workdir}', f'--data={tmp_path / "feats"}', f'--out={tmp_path / "index2"}',
       f'--audio_root={tmp_path / "audio"}'])
  assert no_table.returncode != 0 and not (tmp_path / 'index2').exists()
  assert f'{tmp_path / "feats"} has no word_vectors.npz of its own' in no_table.stderr
  assert 'pass --word_vectors' in no_table.stderr


def _features_folder(root, audio_files):
  """A features folder of two items with random experts and the given audio_files.json."""
  from jaxretrieval.features.handcrafted import DIMS
  from jaxretrieval.features.release_writer import Item, write_release
  rng = np.random.default_rng(0)
  items = [Item(i, {e: rng.normal(size=(3, d)).astype(np.float32) for e, d in DIMS.items()}, [])
           for i in audio_files]
  write_release(root, items, {'all': list(audio_files)}, None)
  (root / 'audio_files.json').write_text(json.dumps(audio_files))
  return root


@pytest.mark.parametrize('listed', ['../../etc/hostname', 'audio/link.wav'])
def test_index_refuses_audio_outside_the_collection(tiny_workdir, tmp_path, listed):
  from jaxretrieval.search.build import build_index
  folder = _features_folder(tmp_path / 'feats', {'fine': 'audio/fine.wav', 'bad': listed})
  (folder / 'audio').mkdir()
  (folder / 'audio' / 'fine.wav').write_bytes(b'RIFF')
  (folder / 'audio' / 'link.wav').symlink_to('/etc/hostname')
  with pytest.raises(ValueError, match=r'item bad: audio file .* outside the collection root'):
    build_index(str(tiny_workdir), str(tmp_path / 'index'), data=str(folder))
  assert not (tmp_path / 'index').exists()


def test_index_refuses_nan_embeddings(tiny_workdir, tiny_index, tmp_path, monkeypatch):
  from jaxretrieval.search import build
  items = build.Embedder.items

  def nan_row(self, variables, data):
    audio = items(self, variables, data)
    first = next(iter(audio))
    audio[first] = np.array(audio[first])
    audio[first][1] = np.nan
    return audio
  monkeypatch.setattr(build.Embedder, 'items', nan_row)
  second = IndexStore.load(tiny_index).ids[1]
  with pytest.raises(ValueError, match=rf'1 item\(s\) embed to NaN or Inf values: {second};'):
    build.build_index(str(tiny_workdir), str(tmp_path / 'index'), split='test')
  assert not (tmp_path / 'index').exists()
