"""VGGSound expert: spectrogram, Flax ResNet-18 and H.pth.tar loading vs a torch model H."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxretrieval.features import vggsound, vggsound_frontend


def reference_spectrogram(wave):
  """hche11/VGGSound `dataloader.py` on a 16 kHz mono clip, without its 10 s cut."""
  import scipy.signal  # here: 1.4 s to import, which every pytest worker would pay
  wave = np.tile(wave, 10)[:160000] if len(wave) < 160000 else wave
  wave = np.clip(wave, -1, 1)
  _, _, spec = scipy.signal.spectrogram(wave, 16000, nperseg=512, noverlap=353)
  spec = np.log(spec + 1e-7)
  return (spec - spec.mean()) / (spec.std() + 1e-9)


def test_frame_counts_match_the_releases():
  assert vggsound.output_length(vggsound_frontend.spectrogram(np.zeros(160000)).shape[1]) == 32
  assert vggsound.output_length(vggsound_frontend.spectrogram(np.zeros(480000)).shape[1]) == 95
  assert vggsound_frontend.spectrogram(np.zeros(30 * 16000), max_seconds=10).shape[1] == 1004


def test_features_equal_model_h_in_torch(published):
  variables = vggsound.load_weights(published.vggsound_checkpoint)
  names = sorted(published.waves)
  specs = [vggsound_frontend.spectrogram(published.waves[n]) for n in names]
  for n, s in zip(names, specs):
    np.testing.assert_allclose(s, reference_spectrogram(published.waves[n].astype(np.float64)),
                               rtol=1e-4, atol=1e-4)
  # One padded batch of mixed lengths (10 s and 12 s) equals each clip run alone in torch.
  bucket = max(s.shape[1] for s in specs) + 37
  batch = np.stack([np.pad(s, ((0, 0), (0, bucket - s.shape[1]))) for s in specs])
  lengths = np.array([s.shape[1] for s in specs])
  out = np.asarray(jax.jit(vggsound.ResNet18().apply)(variables, jnp.asarray(batch),
                                                       jnp.asarray(lengths)))
  for k, (n, s) in enumerate(zip(names, specs)):
    ref = published.vggsound_features(n)
    length = vggsound.output_length(s.shape[1])
    assert ref.shape == (length, 512)
    np.testing.assert_allclose(out[k, :length], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_weight_errors_name_the_file_and_the_url(published, tmp_path):
  torch_model = published.vggsound_model
  with pytest.raises(vggsound.WeightsError, match='not found; download http.*H.pth.tar'):
    vggsound.load_weights(tmp_path / 'absent.pth.tar')
  (tmp_path / 'junk.pth.tar').write_bytes(b'not a checkpoint')
  with pytest.raises(vggsound.WeightsError, match='junk.pth.tar.*download'):
    vggsound.load_weights(tmp_path / 'junk.pth.tar')
  state = {k: v.clone() for k, v in torch_model.state_dict().items()}
  state['audnet.layer3.1.conv2.weight'] = torch.zeros(256, 256, 1, 1)
  torch.save({'model_state_dict': state}, tmp_path / 'wrong.pth.tar')
  with pytest.raises(vggsound.WeightsError, match=r'audnet.layer3.1.conv2.weight has shape'):
    vggsound.load_weights(tmp_path / 'wrong.pth.tar')
  del state['audnet.bn1.running_var']
  torch.save({'model_state_dict': state}, tmp_path / 'partial.pth.tar')
  with pytest.raises(vggsound.WeightsError, match='audnet.bn1.running_var missing'):
    vggsound.load_weights(tmp_path / 'partial.pth.tar')
