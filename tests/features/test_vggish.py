"""VGGish: frontend, Flax network and postprocessing vs the official graph and torchvggish."""

import jax
import numpy as np
import pytest
import torch

from jaxretrieval.features import vggish, vggish_frontend
from tests.features import reference_models


def test_frontend_equals_the_official_one(published):
  assert {n: len(e) for n, e in published.examples.items()}['noise'] == 12
  for name, wave in published.waves.items():
    ours = vggish_frontend.log_mel_examples(wave)
    assert ours.shape == published.examples[name].shape, name
    np.testing.assert_allclose(ours, published.examples[name], rtol=1e-4, atol=1e-4)


def _stacked(published):
  """The first three examples of every clip, and the official graph's embeddings of them."""
  names = sorted(published.examples)
  return (np.concatenate([published.examples[n][:3] for n in names]),
          np.concatenate([published.embeddings[n][:3] for n in names]))


def test_short_clips_give_no_example():
  examples, shortest = vggish_frontend.log_mel_examples, vggish_frontend.MIN_SAMPLES
  assert examples(np.zeros(shortest - 1)).shape == (0, 96, 64)
  assert examples(np.zeros(shortest)).shape == (1, 96, 64)
  assert examples(np.zeros(100)).shape == (0, 96, 64)
  assert len(examples(np.zeros(10 * 16000))) == 10
  assert len(examples(np.zeros(30 * 16000))) == 31


def test_embeddings_equal_the_official_graph_and_postprocess(published):
  stacked, tf_embeddings = _stacked(published)
  params = vggish.load_weights(published.vggish_checkpoint)
  ours = np.asarray(jax.jit(vggish.VGGish().apply)({'params': params}, stacked))
  np.testing.assert_allclose(ours, tf_embeddings, rtol=1e-4,
                             atol=1e-4 * np.abs(tf_embeddings).max())
  # vggish_postprocess.Postprocessor: PCA, clip, scale, truncate to uint8.
  pca = published.pca
  pca_applied = np.dot(pca['pca_eigen_vectors'],
                       tf_embeddings.T.astype(np.float64) - pca['pca_means']).T
  expected = ((np.clip(pca_applied, -2, 2) + 2) * (255 / 4)).astype(np.uint8)
  got = vggish.postprocess(ours, vggish.load_pca(published.vggish_pca))
  assert got.min() >= 0 and got.max() <= 255 and np.all(got == np.floor(got))
  # Values on a quantisation step boundary may land either side of it in float32.
  assert np.mean(got == expected) > 0.99 and np.abs(got - expected).max() <= 1


def test_torchvggish_weights_and_flavour(published, tmp_path):
  stacked, pca = _stacked(published)[0], published.pca
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
  assert vggish.load_pca(published.vggish_pca)[0].shape == (128, 128)
