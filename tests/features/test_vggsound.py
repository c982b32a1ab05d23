"""VGGSound expert: spectrogram, Flax ResNet-18 and H.pth.tar loading vs a torch model H."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch

from jaxretrieval.features import audio_io, vggsound
from tests.features import clips, reference_models


def reference_spectrogram(wave):
  """hche11/VGGSound `dataloader.py` on a 16 kHz mono clip, without its 10 s cut."""
  wave = np.tile(wave, 10)[:160000] if len(wave) < 160000 else wave
  wave = np.clip(wave, -1, 1)
  _, _, spec = scipy.signal.spectrogram(wave, 16000, nperseg=512, noverlap=353)
  spec = np.log(spec + 1e-7)
  return (spec - spec.mean()) / (spec.std() + 1e-9)


@pytest.fixture(scope='module')
def model_h(tmp_path_factory):
  """(torch model, path of its H.pth.tar) in the legacy torch.save format of torch 1.3."""
  model = reference_models.torch_resnet18()
  path = tmp_path_factory.mktemp('vggsound') / 'H.pth.tar'
  torch.save({'epoch': 3, 'model_state_dict': model.state_dict()}, path,
             _use_new_zipfile_serialization=False)
  return model, path


def test_frame_counts_match_the_releases():
  assert vggsound.output_length(vggsound.spectrogram(np.zeros(160000)).shape[1]) == 32
  assert vggsound.output_length(vggsound.spectrogram(np.zeros(480000)).shape[1]) == 95
  assert vggsound.spectrogram(np.zeros(30 * 16000), max_seconds=10).shape[1] == 1004


def test_features_equal_model_h_in_torch(model_h, tmp_path):
  torch_model, path = model_h
  variables = vggsound.load_weights(path)
  waves = [audio_io.read_audio(p, resampler='kaiser_best')
           for p in clips.write_clips(tmp_path).values()]
  specs = [vggsound.spectrogram(w) for w in waves]
  for w, s in zip(waves, specs):
    np.testing.assert_allclose(s, reference_spectrogram(w.astype(np.float64)), rtol=1e-4,
                               atol=1e-4)
  # One padded batch of mixed lengths (10 s and 12 s) equals each clip run alone in torch.
  bucket = max(s.shape[1] for s in specs) + 37
  batch = np.stack([np.pad(s, ((0, 0), (0, bucket - s.shape[1]))) for s in specs])
  lengths = np.array([s.shape[1] for s in specs])
  out = np.asarray(jax.jit(vggsound.ResNet18().apply)(variables, jnp.asarray(batch),
                                                       jnp.asarray(lengths)))
  for k, s in enumerate(specs):
    with torch.no_grad():
      ref = torch_model.audnet.features(torch.from_numpy(s)[None, None]).mean(dim=2)[0].T
    n = vggsound.output_length(s.shape[1])
    assert ref.shape == (n, 512)
    np.testing.assert_allclose(out[k, :n], ref.numpy(), rtol=1e-4,
                               atol=1e-4 * float(ref.abs().max()))


def test_weight_errors_name_the_file_and_the_url(model_h, tmp_path):
  torch_model, _ = model_h
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
