"""`python -m jaxretrieval.features --experts vggish,vggsound` with published-format weights."""

import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from jaxretrieval.data.releases import ReleaseReader
from jaxretrieval.features import audio_io, pretrained, vggish, vggsound
from jaxretrieval.features.release_writer import folder_release
from tests.features import clips, reference_models


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  """torchvggish-format VGGish + PCA and a legacy-format H.pth.tar, with random weights."""
  folder = tmp_path_factory.mktemp('weights')
  torch.save(reference_models.torch_vggish().state_dict(), folder / 'vggish.pth')
  rng = np.random.default_rng(0)
  torch.save({'pca_eigen_vectors': torch.from_numpy(np.linalg.qr(rng.normal(size=(128, 128)))[0]),
              'pca_means': torch.from_numpy(rng.normal(size=(128, 1)))}, folder / 'pca.pth')
  torch.save({'model_state_dict': reference_models.torch_resnet18().state_dict()},
             folder / 'H.pth.tar', _use_new_zipfile_serialization=False)
  return folder


def run(*args):
  return subprocess.run([sys.executable, '-m', 'jaxretrieval.features', *args],
                        capture_output=True, text=True)


def test_cli_writes_the_paper_experts(weights, tmp_path):
  paths = clips.write_clips(tmp_path / 'audio')
  out = tmp_path / 'out'
  result = run(f'--audio_dir={tmp_path / "audio"}', f'--out={out}', '--experts=vggish,vggsound',
               f'--vggish_checkpoint={weights / "vggish.pth"}',
               f'--vggish_pca={weights / "pca.pth"}',
               f'--vggsound_checkpoint={weights / "H.pth.tar"}', '--workers=2', '--chunk=3')
  assert result.returncode == 0, result.stderr
  assert 'clips/s' in result.stdout and 'ETA' in result.stdout
  assert '1 too short for vggish' in result.stdout  # the 0.5 s clip
  ids = (out / 'all_list.txt').read_text().split()
  reader = ReleaseReader('custom', out, folder_release(out, ['all'], {}))
  examples = dict(reader.audio_examples('all'))
  assert sorted(examples) == sorted(ids) == sorted(p.name for p in paths.values())
  # Each clip equals the modules run directly on that clip alone.
  options = pretrained.Options()
  runners = pretrained.load_runners(['vggish', 'vggsound'], options, weights / 'vggish.pth',
                                    weights / 'pca.pth', weights / 'H.pth.tar')
  for name, path in paths.items():
    example = examples[path.name]
    wave = audio_io.read_audio(path, resampler='kaiser_best')
    sound = runners['vggsound']([vggsound.spectrogram(wave)])[0]
    np.testing.assert_allclose(example['experts']['vggsound'], sound, rtol=1e-4, atol=1e-4)
    ish = runners['vggish']([vggish.log_mel_examples(wave)])[0]
    if name == 'short':
      assert ish is None and not example['available']['vggish']
    else:
      assert example['available']['vggish']
      np.testing.assert_array_equal(example['experts']['vggish'], ish)
  assert examples['noise.flac']['experts']['vggish'].shape == (12, 128)
  assert examples['silence.wav']['experts']['vggsound'].shape == (32, 512)


def test_weight_errors_are_one_line_with_the_url(weights, tmp_path):
  clips.write_clips(tmp_path / 'audio')
  common = [f'--audio_dir={tmp_path / "audio"}', f'--out={tmp_path / "out"}']
  result = run(*common, '--experts=vggsound', f'--vggsound_checkpoint={tmp_path / "H.pth.tar"}')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].endswith(
      'not found; download http://www.robots.ox.ac.uk/~vgg/data/vggsound/models/H.pth.tar')
  result = run(*common, '--experts=vggish', f'--vggish_checkpoint={weights / "H.pth.tar"}',
               f'--vggish_pca={weights / "pca.pth"}')
  assert 'key features.0.weight missing' in result.stderr and 'torchvggish' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  result = run(*common, '--experts=vggish', f'--vggish_checkpoint={weights / "vggish.pth"}')
  assert 'needs --vggish_pca' in result.stderr and 'vggish_pca_params.npz' in result.stderr
  assert not (tmp_path / 'out').exists()


def test_buckets_are_few_and_hold_the_clip():
  sizes = {pretrained.bucket(n) for n in range(1, 20000, 7)}
  assert sorted(sizes)[:4] == [256, 384, 512, 768] and len(sizes) == 14
  assert all(pretrained.bucket(n) >= n for n in range(1, 5000, 13))
