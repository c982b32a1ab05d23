"""SynthCaps: deterministic generation through the release layout into TFDS."""

import json
import pathlib

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from jaxretrieval.data.releases import ReleaseReader
from jaxretrieval.data.synthcaps import captions as captions_lib
from jaxretrieval.data.synthcaps import sounds
from jaxretrieval.data.synthcaps.generate import generate
from jaxretrieval.data.tfds_builders import SynthCaps
from jaxretrieval.text import WordVectors, tokenize


@pytest.fixture(scope='module')
def built(synthcaps_tiny):
  """synthcaps/tiny as the run's shared fixture built it (`SynthCaps.download_and_prepare`
  without a manual_dir)."""
  return SynthCaps(config='tiny', data_dir=str(synthcaps_tiny)), synthcaps_tiny


def test_builds_without_manual_dir_with_playable_audio(built):
  builder, _ = built
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'val', 'test')} == {
      'train': 48, 'val': 16, 'test': 16}
  for example in tfds.as_numpy(builder.as_dataset(split='test').take(4)):
    assert len(example['captions']) == 5
    assert example['caption_lengths'].sum() == len(example['caption_vectors'])
    assert all(example['available'].values())
    assert example['experts']['logmel'].shape[1] == 128
    assert example['experts']['spectral'].shape[1] == 32
    wave, rate = soundfile.read(example['audio_path'].decode())
    assert rate == 16000 and 0.5 < len(wave) / rate < 8.0
    # The stored features are those of the stored audio (16-bit rounding aside).
    from jaxretrieval.features.handcrafted import extract
    np.testing.assert_allclose(extract(wave.astype(np.float32))['logmel'],
                               example['experts']['logmel'], atol=0.05)


def test_generation_is_deterministic(tmp_path):
  sizes = {'train': 3, 'val': 2, 'test': 2}
  generate(tmp_path / 'a', sizes, seed=7, workers=1)  # in this process
  generate(tmp_path / 'b', sizes, seed=7, workers=2)  # in two worker processes
  generate(tmp_path / 'c', sizes, seed=8, workers=1)
  read = lambda d: {k: v for k, v in ReleaseReader('synthcaps', tmp_path / d).examples('val')}
  a, b, c = read('a'), read('b'), read('c')
  for item in a:
    np.testing.assert_array_equal(a[item]['experts']['logmel'], b[item]['experts']['logmel'])
    assert a[item]['captions'] == b[item]['captions']
  assert any(a[i]['captions'] != c[i]['captions'] for i in a)
  files = json.loads((tmp_path / 'a' / 'audio_files.json').read_text())
  assert files['val_00001'] == 'audio/val_00001.wav'


def test_captions_mention_only_true_attributes():
  rng = np.random.default_rng(0)
  opposite = {'loud': 'quiet', 'quiet': 'loud', 'high': 'low', 'low': 'high', 'fast': 'slow',
              'slow': 'fast', 'long': 'short', 'short': 'long'}
  for _ in range(200):
    event = sounds.random_event(rng)
    phrase = captions_lib.describe_event(event, rng)
    words = set(tokenize(phrase))
    for attr in captions_lib._attributes(event):
      wrong = set(captions_lib.ADJECTIVES[opposite[attr]])
      assert not (words & wrong - set(captions_lib.ADJECTIVES[attr])), (event, phrase)


def test_every_kind_renders_and_attributes_change_the_sound():
  rng = np.random.default_rng(1)
  for kind, (has_pitch, has_rate) in sounds.KINDS.items():
    x = sounds.render_event(sounds.Event(kind, True, True, True if has_pitch else None,
                                         True if has_rate else None), 1.0, rng)
    assert x.shape == (16000,) and np.all(np.isfinite(x))
    np.testing.assert_allclose(np.sqrt(np.mean(x ** 2)), 1.0, rtol=1e-3)
  centroid = lambda x: (np.abs(np.fft.rfft(x)) * np.arange(8001)).sum() / np.abs(np.fft.rfft(x)).sum()
  high = sounds.render_event(sounds.Event('beep', True, True, True), 1.0, rng)
  low = sounds.render_event(sounds.Event('beep', True, True, False), 1.0, rng)
  assert centroid(high) > 3 * centroid(low)


def test_word_vectors_cover_captions_and_group_synonyms(built):
  _, data_dir = built
  root = next(pathlib.Path(data_dir, 'downloads').glob('synthcaps-tiny-*'))
  words = WordVectors.load(root / 'word_vectors.npz')
  reader = ReleaseReader('synthcaps', root)
  for _, example in reader.examples('train'):
    for c in example['captions']:
      assert all(t in words for t in tokenize(c))
  v = lambda w: words.matrix[words.index[w]] / np.linalg.norm(words.matrix[words.index[w]])
  assert v('beep') @ v('tone') > 0.6
  assert v('loud') @ v('intense') > 0.6
  assert abs(v('beep') @ v('engine')) < 0.3
