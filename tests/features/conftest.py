"""Fixtures shared by the feature tests, built once per run (they are the slow part).

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
from tests.conftest import _built_once
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


def _build(folder: pathlib.Path) -> None:
  """Writes the published files and, in `reference.npz`, what the reference
  implementations compute from them (waves, official examples and embeddings)."""
  paths = clips.write_clips(folder / 'audio')
  examples = {name: reference_models.official_wavfile_examples(p)
              for name, p in paths.items()}
  names = sorted(examples)
  stacked = np.concatenate([examples[n] for n in names]).astype(np.float32)
  official = reference_models.write_tf_vggish(folder / 'vggish_model.ckpt', stacked)
  bounds = np.cumsum([0] + [len(examples[n]) for n in names])
  rng = np.random.default_rng(3)
  np.savez(folder / 'vggish_pca_params.npz',
           pca_eigen_vectors=np.linalg.qr(rng.normal(size=(128, 128)))[0] * 0.05,
           pca_means=rng.normal(size=(128, 1)) * 0.5)
  model = reference_models.torch_resnet18()
  torch.save({'epoch': 3, 'model_state_dict': model.state_dict()}, folder / 'H.pth.tar',
             _use_new_zipfile_serialization=False)
  reference = {}
  for i, n in enumerate(names):
    reference[f'wave/{n}'] = audio_io.read_audio(paths[n], resampler='kaiser_best')
    reference[f'examples/{n}'] = examples[n].astype(np.float32)
    reference[f'embeddings/{n}'] = official[bounds[i]:bounds[i + 1]]
  np.savez(folder / 'reference.npz', **reference)


@pytest.fixture(scope='session')
def published(tmp_path_factory) -> Published:
  # Built once per run (TensorFlow's VGGish graph and resampy are its slow part); under
  # pytest-xdist the other workers read it.
  folder = _built_once(tmp_path_factory, 'published', _build)
  paths = {p.stem: p for p in sorted((folder / 'audio').iterdir())}
  with np.load(folder / 'reference.npz') as f:
    reference = {k: f[k] for k in f.files}
  part = lambda kind: {n: reference[f'{kind}/{n}'] for n in paths}
  with np.load(folder / 'vggish_pca_params.npz') as f:
    pca = {k: f[k] for k in f.files}
  model = reference_models.torch_resnet18()
  model.load_state_dict(torch.load(folder / 'H.pth.tar', weights_only=True)['model_state_dict'])
  return Published(folder, paths, part('wave'), folder / 'vggish_model.ckpt',
                   folder / 'vggish_pca_params.npz', pca, folder / 'H.pth.tar', model.eval(),
                   part('examples'), part('embeddings'))
