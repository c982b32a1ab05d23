"""The Python API (`from jaxretrieval import Searcher`), and the README's example of it."""

import contextlib
import io
import json
import pathlib
import re
import zlib

import numpy as np
import pytest

from jaxretrieval import Searcher
from jaxretrieval.search.engine import Hit, QueryError
from jaxretrieval.search.store import IndexStore


def test_search_returns_typed_records(tiny_index):
  searcher = Searcher.load(tiny_index)
  result = searcher.search('a loud beep followed by hissing', k=4)
  assert len(searcher) == 16 and [h.rank for h in result.hits] == [1, 2, 3, 4]
  for hit in result.hits:
    assert isinstance(hit, Hit) and hit.id == searcher.store.ids[hit.row]
    assert hit.path.endswith('.wav') and hit.duration > 0 and hit.captions
    assert set(hit.cosines) == set(searcher.experts) == set(hit.weights)
    assert hit.score == pytest.approx(sum(hit.weights[e] * c for e, c in hit.cosines.items()),
                                      abs=1e-5)
  with pytest.raises(QueryError, match='no word of the query'):
    searcher.search('qwerty')


def test_search_batch_equals_one_query_at_a_time(tiny_index):
  searcher = Searcher.load(tiny_index, chunk=5)
  queries = ['a loud siren', 'a quiet hum then a beep', 'beep ' * 50]  # the last is long
  for one, query in zip(searcher.search_batch(queries, k=6), queries):
    alone = searcher.search(query, k=6)
    assert [h.id for h in one.hits] == [h.id for h in alone.hits]
    np.testing.assert_allclose([h.score for h in one.hits], [h.score for h in alone.hits],
                               atol=1e-5)


def test_embeddings_score_as_the_search_ranks(tiny_index):
  searcher = Searcher.load(tiny_index)
  text = searcher.embed_text(['a high whistle', 'a low hum'])
  assert text.vectors.shape == (2, 128) and text.experts == searcher.experts
  np.testing.assert_allclose(np.linalg.norm(text.vectors.reshape(2, 2, 64), axis=2), 1.0,
                             atol=1e-5)
  np.testing.assert_allclose(text.weights.sum(1), 1.0, atol=1e-5)
  from jaxretrieval.search.api import AudioEmbeddings
  store = searcher.store
  audio = AudioEmbeddings(np.asarray(store.embeddings), store.availability, searcher.experts)
  scores = searcher.score(text, audio)
  for i, query in enumerate(['a high whistle', 'a low hum']):
    hits = searcher.search(query, k=16).hits
    np.testing.assert_allclose(scores[i, [h.row for h in hits]], [h.score for h in hits],
                               atol=1e-5)


def features_folder(root: pathlib.Path, ids: list[str], audio: tuple[str, ...] = (),
                    captions: dict[str, list[str]] | None = None, words=None) -> dict:
  """A features folder of `ids` whose features depend only on each id (so an item has the
  same features in every folder), as `python -m jaxretrieval.features` writes it; the ids
  in `audio` get a wav file (a tone whose pitch depends on the id), those in `captions`
  their captions (which need `words`). Returns id -> features."""
  import soundfile

  from jaxretrieval.features.handcrafted import DIMS
  from jaxretrieval.features.release_writer import Item, write_release
  features = {}
  for i in ids:
    rng = np.random.default_rng(zlib.crc32(i.encode()))
    features[i] = {e: rng.normal(size=(3, d)).astype(np.float32) for e, d in DIMS.items()}
  captions = captions or {}
  write_release(root, [Item(i, features[i], captions.get(i, [])) for i in ids],
                {'all': list(ids)}, words)
  (root / 'audio_files.json').write_text(json.dumps({i: f'{i}.wav' for i in ids}))
  for i in audio:
    hz = 200 + zlib.crc32(i.encode()) % 4000
    soundfile.write(root / f'{i}.wav', np.sin(2 * np.pi * hz * np.arange(8000) / 16000) / 2,
                    16000)
  return features


def synthcaps_words(tiny_workdir) -> pathlib.Path:
  data_dir = pathlib.Path(json.loads((tiny_workdir / 'config.json').read_text())['data_dir'])
  return next(data_dir.glob('downloads/synthcaps-tiny-*/word_vectors.npz'))


def test_embed_audio_equals_the_indexed_embeddings(tiny_workdir, tmp_path):
  from jaxretrieval.search.build import build_index
  features = features_folder(tmp_path / 'feats', ['a', 'b', 'c'])
  build_index(str(tiny_workdir), str(tmp_path / 'index'), data=str(tmp_path / 'feats'),
              word_vectors=str(synthcaps_words(tiny_workdir)))
  searcher = Searcher.load(tmp_path / 'index')
  store = searcher.store
  assert all(e.temporal == 'vlad' for e in store.spec.experts)  # [T, d] features
  given = {e: np.stack([features[i][e] for i in store.ids]) for e in searcher.experts}
  audio = searcher.embed_audio(given)
  np.testing.assert_allclose(audio.vectors, store.embeddings, atol=1e-5)
  with pytest.raises(ValueError, match='the model reads exactly'):
    searcher.embed_audio({searcher.experts[0]: given[searcher.experts[0]]})


def test_the_readme_example_runs(tiny_index):
  readme = (pathlib.Path(__file__).parents[2] / 'README.md').read_text()
  code = re.search(r'### Python API\n\n```python\n(.*?)```', readme, re.S).group(1)
  assert "Searcher.load('workdirs/synthcaps_index')" in code
  code = code.replace("'workdirs/synthcaps_index'", repr(str(tiny_index)))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  lines = out.getvalue().splitlines()
  assert lines[0].startswith('read as') and len(lines) == 1 + 5 + 2 + 1
  assert lines[1].split()[0] == '1' and lines[6].startswith('a loud siren [')


def test_a_features_folder_s_captions_reach_the_index(tiny_workdir, tmp_path):
  """Captions of a features folder made with --captions are shown as a TFDS dataset's are:
  in the index, the API's hits and the command line's results."""
  from jaxretrieval.search.build import build_index
  from jaxretrieval.search.query import format_result
  from jaxretrieval.text import WordVectors
  captions = {'beeper': ['a loud beep', 'two short beeps'], 'hisser': ['a quiet hiss']}
  features_folder(tmp_path / 'feats', ['beeper', 'hisser', 'silent'], captions=captions,
                  words=WordVectors.load(synthcaps_words(tiny_workdir)))
  build_index(str(tiny_workdir), str(tmp_path / 'index'), data=str(tmp_path / 'feats'))
  searcher = Searcher.load(tmp_path / 'index')
  assert dict(zip(searcher.store.ids, searcher.store.captions)) == captions | {'silent': []}
  result = searcher.search('a beep', k=3)
  assert {h.id: h.captions for h in result.hits} == captions | {'silent': []}
  shown = format_result(result)
  for caption in captions['beeper'] + captions['hisser']:
    assert f'"{caption}"' in shown


def test_a_tfds_dataset_and_its_features_folder_index_alike(tiny_workdir, tiny_index, tmp_path):
  """SynthCaps writes its downloads as a features folder: indexed from there, its test split
  has the captions, durations and thumbnails the TFDS dataset's index has."""
  from jaxretrieval.search.build import build_index
  folder = synthcaps_words(tiny_workdir).parent
  build_index(str(tiny_workdir), str(tmp_path / 'index'), data=str(folder), split='test')
  from_folder = IndexStore.load(tmp_path / 'index')
  from_tfds = Searcher.load(tiny_index).store
  row = {i: r for r, i in enumerate(from_folder.ids)}
  assert sorted(row) == sorted(from_tfds.ids)
  for r, i in enumerate(from_tfds.ids):
    assert from_folder.captions[row[i]] == from_tfds.captions[r] and from_tfds.captions[r]
    assert from_folder.durations[row[i]] == from_tfds.durations[r]
    assert from_folder.thumbnail(row[i]) == from_tfds.thumbnail(r) != b''
