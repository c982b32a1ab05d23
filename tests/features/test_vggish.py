"""VGGish: frontend, Flax network and postprocessing vs the official graph and torchvggish."""

import jax
import numpy as np
import pytest
import soundfile
import torch

from jaxretrieval.features import audio_io, vggish
from tests.features import clips, reference_models


def reference_examples(path):
  """The official `vggish_input.wavfile_to_examples`, written out from its definition: int16
  / 32768, channel mean, resampy kaiser_best, 25/10 ms |STFT| (periodic Hann, 512 bins),
  HTK-mel 64 x 125-7500 Hz without the DC bin, log(+0.01), 96-frame examples."""
  import resampy
  data, rate = soundfile.read(str(path), dtype='int16', always_2d=True)
  x = (data / 32768.0).mean(axis=1)
  if rate != 16000:
    x = resampy.resample(x, rate, 16000)
  n = 1 + (len(x) - 400) // 160 if len(x) >= 400 else 0
  frames = np.stack([x[i * 160:i * 160 + 400] for i in range(n)]) if n else np.zeros((0, 400))
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
  spec = np.abs(np.fft.rfft(frames * hann, 512))
  to_mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
  bins = to_mel(np.linspace(0, 8000, 257))
  edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
  bank = np.zeros((257, 64))
  for i in range(64):
    lo, mid, hi = edges[i:i + 3]
    bank[:, i] = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
  bank[0] = 0
  log_mel = np.log(spec @ bank + 0.01)
  k = len(log_mel) // 96
  return log_mel[:k * 96].reshape(k, 96, 64)


@pytest.fixture(scope='module')
def published(tmp_path_factory):
  """Random VGGish weights in both published formats, PCA parameters, and clips."""
  folder = tmp_path_factory.mktemp('vggish')
  paths = clips.write_clips(folder / 'clips')
  examples = {name: reference_examples(p) for name, p in paths.items()}
  stacked = np.concatenate([e[:3] for e in examples.values()]).astype(np.float32)
  tf_embeddings = reference_models.write_tf_vggish(folder / 'vggish_model.ckpt', stacked)
  rng = np.random.default_rng(3)
  pca = {'pca_eigen_vectors': np.linalg.qr(rng.normal(size=(128, 128)))[0] * 0.05,
         'pca_means': rng.normal(size=(128, 1)) * 0.5}
  np.savez(folder / 'vggish_pca_params.npz', **pca)
  return folder, paths, examples, stacked, tf_embeddings, pca


def test_frontend_equals_the_official_one(published):
  _, paths, examples, _, _, _ = published
  assert {n: len(e) for n, e in examples.items()}['noise'] == 12
  for name, path in paths.items():
    ours = vggish.log_mel_examples(audio_io.read_audio(path, resampler='kaiser_best'))
    assert ours.shape == examples[name].shape, name
    np.testing.assert_allclose(ours, examples[name], rtol=1e-4, atol=1e-4)


def test_short_clips_give_no_example():
  assert vggish.log_mel_examples(np.zeros(vggish.MIN_SAMPLES - 1)).shape == (0, 96, 64)
  assert vggish.log_mel_examples(np.zeros(vggish.MIN_SAMPLES)).shape == (1, 96, 64)
  assert vggish.log_mel_examples(np.zeros(100)).shape == (0, 96, 64)
  assert len(vggish.log_mel_examples(np.zeros(10 * 16000))) == 10
  assert len(vggish.log_mel_examples(np.zeros(30 * 16000))) == 31


def test_embeddings_equal_the_official_graph_and_postprocess(published):
  folder, _, _, stacked, tf_embeddings, pca = published
  params = vggish.load_weights(folder / 'vggish_model.ckpt')
  ours = np.asarray(jax.jit(vggish.VGGish().apply)({'params': params}, stacked))
  np.testing.assert_allclose(ours, tf_embeddings, rtol=1e-4,
                             atol=1e-4 * np.abs(tf_embeddings).max())
  # vggish_postprocess.Postprocessor: PCA, clip, scale, truncate to uint8.
  pca_applied = np.dot(pca['pca_eigen_vectors'],
                       tf_embeddings.T.astype(np.float64) - pca['pca_means']).T
  expected = ((np.clip(pca_applied, -2, 2) + 2) * (255 / 4)).astype(np.uint8)
  got = vggish.postprocess(ours, vggish.load_pca(folder / 'vggish_pca_params.npz'))
  assert got.min() >= 0 and got.max() <= 255 and np.all(got == np.floor(got))
  # Values on a quantisation step boundary may land either side of it in float32.
  assert np.mean(got == expected) > 0.99 and np.abs(got - expected).max() <= 1


def test_torchvggish_weights_and_flavour(published, tmp_path):
  _, _, _, stacked, _, pca = published
  model = reference_models.torch_vggish()
  torch.save(model.state_dict(), tmp_path / 'vggish.pth', _use_new_zipfile_serialization=False)
  torch.save({k: torch.from_numpy(v) for k, v in pca.items()}, tmp_path / 'pca.pth')
  reference = reference_models.run_torch_vggish(model, stacked[:6])
  params = vggish.load_weights(tmp_path / 'vggish.pth')
  ours = np.asarray(vggish.VGGish(relu_embedding=True).apply({'params': params}, stacked[:6]))
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
  loaded = vggish.load_pca(tmp_path / 'pca.pth')
  np.testing.assert_allclose(loaded[1], pca['pca_means'][:, 0])
  projected = (reference - pca['pca_means'][:, 0]) @ pca['pca_eigen_vectors'].T
  rounded = np.round((np.clip(projected, -2, 2) + 2) * (255 / 4))
  assert np.mean(vggish.postprocess(ours, loaded, 'torchvggish') == rounded) > 0.99


def test_weight_errors_name_the_file_and_the_url(published, tmp_path):
  folder = published[0]
  with pytest.raises(vggish.WeightsError, match='not found; download https://.*vggish_model'):
    vggish.load_weights(tmp_path / 'vggish_model.ckpt')
  (tmp_path / 'bad.ckpt').write_bytes(b'junk')
  with pytest.raises(vggish.WeightsError, match='bad.ckpt: not a readable TensorFlow'):
    vggish.load_weights(tmp_path / 'bad.ckpt')
  torch.save({'features.0.weight': torch.zeros(64, 1, 5, 5)}, tmp_path / 'small.pth')
  with pytest.raises(vggish.WeightsError, match='small.pth: key features.0.bias missing'):
    vggish.load_weights(tmp_path / 'small.pth')
  np.savez(tmp_path / 'pca.npz', pca_eigen_vectors=np.zeros((64, 128)), pca_means=np.zeros(128))
  with pytest.raises(vggish.WeightsError, match=r'pca.npz: PCA shapes \(64, 128\)'):
    vggish.load_pca(tmp_path / 'pca.npz')
  with pytest.raises(vggish.WeightsError, match='vggish_pca_params.npz'):
    vggish.load_pca(tmp_path / 'absent.npz')
  assert vggish.load_pca(folder / 'vggish_pca_params.npz')[0].shape == (128, 128)
