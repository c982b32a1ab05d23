"""Fixtures shared by the feature tests, built once per session (they are the slow part).

`published`: the test clips, random VGGish weights as the official TensorFlow checkpoint
and PCA `.npz`, a random VGGSound model H as `H.pth.tar` (legacy torch.save format), and
what the reference implementations compute on the clips: the official VGGish frontend and
graph, and model H's last convolutional map in torch.
"""

import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from jaxretrieval.features import audio_io, vggsound_frontend
from tests.features import clips, reference_models


@dataclasses.dataclass
class Published:
  folder: pathlib.Path
  clips: dict[str, pathlib.Path]  # name -> file
  waves: dict[str, np.ndarray]  # name -> 16 kHz mono (resampy kaiser_best)
  vggish_checkpoint: pathlib.Path  # official format, random weights
  vggish_pca: pathlib.Path
  pca: dict[str, np.ndarray]  # its arrays
  vggsound_checkpoint: pathlib.Path  # H.pth.tar
  vggsound_model: torch.nn.Module  # the same weights in torch
  examples: dict[str, np.ndarray]  # official frontend `[n, 96, 64]`
  embeddings: dict[str, np.ndarray]  # official graph `[n, 128]`
  _vggsound: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def postprocessed(self, name: str) -> np.ndarray:
    """`vggish_postprocess.Postprocessor` on the official embeddings: PCA, clip, truncate."""
    pca_applied = np.dot(self.pca['pca_eigen_vectors'],
                         self.embeddings[name].T.astype(np.float64) - self.pca['pca_means']).T
    return ((np.clip(pca_applied, -2, 2) + 2) * (255 / 4)).astype(np.uint8).astype(np.float32)

  def vggsound_features(self, name: str) -> np.ndarray:
    """Model H's layer4 map of the whole clip, averaged over frequency: `[T', 512]`."""
    if name not in self._vggsound:  # computed once: several tests compare with it
      spec = vggsound_frontend.spectrogram(self.waves[name])
      with torch.no_grad():
        self._vggsound[name] = self.vggsound_model.audnet.features(
            torch.from_numpy(spec)[None, None]).mean(dim=2)[0].T.numpy()
    return self._vggsound[name]


@pytest.fixture(scope='session')
def published(tmp_path_factory) -> Published:
  folder = tmp_path_factory.mktemp('published')
  paths = clips.write_clips(folder / 'audio')
  examples = {name: reference_models.official_wavfile_examples(p)
              for name, p in paths.items()}
  names = sorted(examples)
  stacked = np.concatenate([examples[n] for n in names]).astype(np.float32)
  official = reference_models.write_tf_vggish(folder / 'vggish_model.ckpt', stacked)
  bounds = np.cumsum([0] + [len(examples[n]) for n in names])
  embeddings = {n: official[bounds[i]:bounds[i + 1]] for i, n in enumerate(names)}
  rng = np.random.default_rng(3)
  pca = {'pca_eigen_vectors': np.linalg.qr(rng.normal(size=(128, 128)))[0] * 0.05,
         'pca_means': rng.normal(size=(128, 1)) * 0.5}
  np.savez(folder / 'vggish_pca_params.npz', **pca)
  model = reference_models.torch_resnet18()
  torch.save({'epoch': 3, 'model_state_dict': model.state_dict()}, folder / 'H.pth.tar',
             _use_new_zipfile_serialization=False)
  waves = {n: audio_io.read_audio(p, resampler='kaiser_best') for n, p in paths.items()}
  return Published(folder, paths, waves, folder / 'vggish_model.ckpt',
                   folder / 'vggish_pca_params.npz', pca, folder / 'H.pth.tar', model,
                   {n: e.astype(np.float32) for n, e in examples.items()}, embeddings)
