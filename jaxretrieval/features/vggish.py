"""VGGish (AudioSet, tensorflow/models research/audioset/vggish) in NumPy + Flax.

What is matched, against the official TensorFlow code:
* Frontend (`log_mel_examples`, NumPy float64 like `mel_features.py`): 16 kHz mono (the
  caller resamples with resampy `kaiser_best` after averaging channels, see
  `audio_io.read_audio`), 25 ms frames every 10 ms with no padding (a partial last frame is
  dropped), periodic Hann window, |rFFT| with 512 bins (magnitude, not power), 64 HTK-mel
  bands 125-7500 Hz, log(mel + 0.01), non-overlapping 96-frame (0.96 s) examples; the
  remainder is dropped, so a clip under 0.975 s (15,600 samples) gives no example at all:
  `log_mel_examples` returns `[0, 96, 64]` and the caller records the clip as having no
  VGGish feature (missing, as in the releases), never a made-up one.
* Network (`VGGish`): conv 64, pool, conv 128, pool, 2x conv 256, pool, 2x conv 512, pool
  (3x3 SAME convolutions with ReLU, 2x2/2 max pools), flatten in HWC order, FC 4096-4096
  with ReLU and a linear FC 128 embedding (the current official graph has no ReLU there).
* Postprocessing (`postprocess`): PCA with the published `vggish_pca_params.npz`, clip to
  [-2, 2], scale to [0, 255] and truncate (`astype(uint8)`), as `vggish_postprocess.py`.

`flavour='torchvggish'` reproduces the torchvggish package instead (a ReLU after the
embedding, rounding in quantisation). Weights come from the official `vggish_model.ckpt`
(read with `tf.train.load_checkpoint`, no TF-slim) or torchvggish's `.pth` files (read with
the project's torch-free reader).

The frontend (`log_mel_examples`) lives in `vggish_frontend.py`: NumPy only, so the decoding
workers import no JAX.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.features.vggish_frontend import DIM
from jaxretrieval.torch_import.torch_pickle import load_pth

QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
FLAVOURS = ('tensorflow', 'torchvggish')
OUTPUTS = ('postprocessed', 'embedding')

URLS = {
    'checkpoint': 'https://storage.googleapis.com/audioset/vggish_model.ckpt',
    'pca': 'https://storage.googleapis.com/audioset/vggish_pca_params.npz',
    'torch': 'https://github.com/harritaylor/torchvggish/releases/download/v0.1/'
             'vggish-10086976.pth',
    'torch_pca': 'https://github.com/harritaylor/torchvggish/releases/download/v0.1/'
                 'vggish_pca_params-970ea276.pth',
}


class WeightsError(ValueError):
  """A weight file is missing, unreadable or does not fit the network."""


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

CONVS = (('conv1', 64), ('conv2', 128), ('conv3_1', 256), ('conv3_2', 256),
         ('conv4_1', 512), ('conv4_2', 512))
POOL_AFTER = ('conv1', 'conv2', 'conv3_2', 'conv4_2')
FCS = (('fc1_1', 4096), ('fc1_2', 4096), ('fc2', DIM))


class VGGish(nn.Module):
  """`[B, 96, 64]` log-mel examples -> `[B, 128]` embeddings."""
  relu_embedding: bool = False  # True in torchvggish
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)[..., None]
    for name, features in CONVS:
      x = nn.relu(nn.Conv(features, (3, 3), padding='SAME', dtype=self.dtype, name=name)(x))
      if name in POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    x = x.reshape(x.shape[0], -1)  # [B, 6 * 4 * 512] in HWC order, as slim.flatten
    for name, features in FCS:
      x = nn.Dense(features, dtype=self.dtype, name=name)(x)
      if name != 'fc2' or self.relu_embedding:
        x = nn.relu(x)
    return x.astype(jnp.float32)


def expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """Flax parameter shapes: {layer: {'kernel': ..., 'bias': ...}}."""
  shapes, channels = {}, 1
  for name, features in CONVS:
    shapes[name] = {'kernel': (3, 3, channels, features), 'bias': (features,)}
    channels = features
  inputs = 6 * 4 * 512
  for name, features in FCS:
    shapes[name] = {'kernel': (inputs, features), 'bias': (features,)}
    inputs = features
  return shapes


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------

def _checked(params: dict, source: str, url: str) -> dict:
  for layer, shapes in expected_shapes().items():
    for kind, shape in shapes.items():
      got = params[layer][kind].shape
      if got != shape:
        raise WeightsError(f'{source}: {layer} {kind} has shape {got}, VGGish needs {shape}; '
                           f'is this the VGGish checkpoint ({url})?')
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def _tf_name(layer: str) -> str:
  block = layer.split('_')[0]
  return f'vggish/{block}/{layer}' if '_' in layer else f'vggish/{layer}'


def load_tf_checkpoint(path: str | pathlib.Path) -> dict:
  """Flax params from the official `vggish_model.ckpt` (TF checkpoint, slim names)."""
  import tensorflow as tf  # only here: importing TF takes seconds
  try:
    reader = tf.train.load_checkpoint(str(path))
  except (tf.errors.OpError, ValueError) as e:
    raise WeightsError(f'{path}: not a readable TensorFlow checkpoint ({type(e).__name__}); '
                       f'download {URLS["checkpoint"]}') from e
  available = reader.get_variable_to_shape_map()
  params = {}
  for layer in expected_shapes():
    names = {'kernel': f'{_tf_name(layer)}/weights', 'bias': f'{_tf_name(layer)}/biases'}
    missing = [n for n in names.values() if n not in available]
    if missing:
      raise WeightsError(f'{path}: variable {missing[0]} missing; is this the VGGish '
                         f'checkpoint ({URLS["checkpoint"]})?')
    params[layer] = {k: reader.get_tensor(n) for k, n in names.items()}
  return _checked(params, str(path), URLS['checkpoint'])


def _torch_layers() -> dict[str, str]:
  """Flax layer -> torchvggish state_dict prefix."""
  convs = ['features.0', 'features.3', 'features.6', 'features.8', 'features.11',
           'features.13']
  fcs = ['embeddings.0', 'embeddings.2', 'embeddings.4']
  return dict(zip([n for n, _ in CONVS] + [n for n, _ in FCS], convs + fcs))


def load_torch_checkpoint(path: str | pathlib.Path) -> dict:
  """Flax params from torchvggish's `vggish-10086976.pth` (no torch needed)."""
  state = _load_pth(path, URLS['torch'])
  params = {}
  for layer, prefix in _torch_layers().items():
    try:
      weight, bias = state[f'{prefix}.weight'], state[f'{prefix}.bias']
    except KeyError as e:
      raise WeightsError(f'{path}: key {e.args[0]} missing; is this torchvggish\'s VGGish '
                         f'({URLS["torch"]})?') from None
    kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T  # OIHW -> HWIO
    params[layer] = {'kernel': kernel, 'bias': bias}
  return _checked(params, str(path), URLS['torch'])


def _load_pth(path, url):
  try:
    state = load_pth(path)
  except (OSError, ValueError) as e:
    raise WeightsError(f'{e}; download {url}') from e
  if not isinstance(state, dict):
    raise WeightsError(f'{path}: expected a state_dict, found {type(state).__name__}; '
                       f'download {url}')
  return state


def load_weights(path: str | pathlib.Path) -> dict:
  """Flax params from either published format: a TF checkpoint (the official single-file
  `vggish_model.ckpt`, or `PREFIX.index` + data files) or a torch file (torchvggish)."""
  path = pathlib.Path(path)
  if path.with_name(path.name + '.index').is_file():
    return load_tf_checkpoint(path)
  if not path.is_file():
    raise WeightsError(f'VGGish checkpoint {path} not found; download {URLS["checkpoint"]} '
                       f'(or torchvggish\'s {URLS["torch"]})')
  with open(path, 'rb') as f:
    head = f.read(2)
  if head in (b'PK', b'\x80\x02'):  # zip-serialised or legacy torch.save
    return load_torch_checkpoint(path)
  return load_tf_checkpoint(path)


def load_pca(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(eigen_vectors [128, 128], means [128]) from `vggish_pca_params.npz` or torchvggish's
  `vggish_pca_params-970ea276.pth`."""
  path = pathlib.Path(path)
  url = URLS['torch_pca'] if path.suffix == '.pth' else URLS['pca']
  if not path.is_file():
    raise WeightsError(f'VGGish PCA parameters {path} not found; download {url}')
  if path.suffix == '.pth':
    params = _load_pth(path, url)
  else:
    try:
      with np.load(path, allow_pickle=False) as f:
        params = dict(f)
    except (OSError, ValueError) as e:
      raise WeightsError(f'{path}: not a readable .npz ({e}); download {url}') from e
  try:
    vectors = np.asarray(params['pca_eigen_vectors'], np.float64)
    means = np.asarray(params['pca_means'], np.float64).reshape(-1)
  except KeyError as e:
    raise WeightsError(f'{path}: array {e.args[0]} missing; download {url}') from None
  if vectors.shape != (DIM, DIM) or means.shape != (DIM,):
    raise WeightsError(f'{path}: PCA shapes {vectors.shape}, {means.shape}, expected '
                       f'({DIM}, {DIM}), ({DIM},); download {url}')
  return vectors, means


def postprocess(embeddings: np.ndarray, pca: tuple[np.ndarray, np.ndarray],
                flavour: str = 'tensorflow') -> np.ndarray:
  """PCA, clip to [-2, 2] and 8-bit quantisation: values 0..255 as float32.

  The official code truncates (`astype(uint8)`); torchvggish rounds.
  """
  vectors, means = pca
  projected = (np.asarray(embeddings, np.float64) - means) @ vectors.T
  clipped = np.clip(projected, QUANTIZE_MIN, QUANTIZE_MAX)
  scaled = (clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))
  quantised = np.round(scaled) if flavour == 'torchvggish' else np.floor(scaled)
  return quantised.astype(np.uint8).astype(np.float32)
