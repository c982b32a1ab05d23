"""VGGSound audio expert: the ResNet-18 classifier "model H" of hche11/VGGSound in Flax.

Matched to that repository (`datasets/dataloader.py`, `models/resnet.py`, `test.py`):
* Spectrogram (`spectrogram`): samples clipped to [-1, 1], `scipy.signal.spectrogram(x,
  16000, nperseg=512, noverlap=353)` (Tukey(0.25) window, constant detrend, one-sided PSD:
  257 bins x one frame every 159 samples), log(S + 1e-7), standardised by the mean and
  standard deviation of the whole clip's spectrogram (std + 1e-9). Computed with SciPy
  itself, as the reference does.
* Network (`ResNet18`): torchvision-style ResNet-18 with one input channel (7x7/2 conv,
  3x3/2 max pool, four stages of two BasicBlocks, 1x1/2 projection shortcuts), BatchNorm
  with the checkpoint's running statistics (eps 1e-5). The input is `[F=257, T]` as the
  reference's `[B, 1, 257, T]`; stride 32 in time gives 32 vectors for 10 s and 95 for 30 s,
  the released token counts.

Assumptions (the extraction code of the paper is private; its appendix says only that the
last convolutional map of model H is used):
* The 512-d vector per time step is the mean over the 9 frequency rows of `layer4`'s output.
  Model H itself pools that map by averaging (`AdaptiveAvgPool2d`), so the mean keeps the
  scale the classifier was trained on; `pool='max'` is offered.
* The reference loader reads 16 kHz mono files without resampling (the authors converted
  them beforehand); we mix to mono and resample with resampy `kaiser_best`, like VGGish.
* It tiles clips shorter than 10 s (`np.tile(x, 10)[:160000]`) and cuts longer ones to
  10 s; we tile the same way but keep the whole of longer clips (`max_seconds=None`),
  because the released 30 s CLOTHO features have 95 vectors, not 32.

Clips of different lengths share a batch: each is zero-padded to a bucket length, and
every convolution and pool sees zeros beyond the clip's own length at its resolution, as
PyTorch's zero padding of the unpadded clip would, so padding does not change a value.

The spectrogram lives in `vggsound_frontend.py` (NumPy/SciPy only, so the decoding workers
import no JAX).
"""

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.features.vggsound_frontend import BINS
from jaxretrieval.torch_import.torch_pickle import load_pth

CLASSES = 309
STAGES = (('layer1', 64, 1), ('layer2', 128, 2), ('layer3', 256, 2), ('layer4', 512, 2))
URL = 'http://www.robots.ox.ac.uk/~vgg/data/vggsound/models/H.pth.tar'


class WeightsError(ValueError):
  """A weight file is missing, unreadable or does not fit the network."""


def output_length(frames):
  """Vectors out of `frames` spectrogram frames: five halvings (ceil)."""
  for _ in range(5):
    frames = (frames - 1) // 2 + 1
  return frames


def _masked(x, lengths):
  """Zeros beyond each clip's length on the time axis of `[B, F, T, C]`."""
  keep = jnp.arange(x.shape[2])[None, :] < lengths[:, None]
  return jnp.where(keep[:, None, :, None], x, 0)


def _halved(lengths):
  return (lengths - 1) // 2 + 1


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm and a (projected) shortcut."""
  features: int
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, lengths):
    conv = lambda f, k, s, p, name: nn.Conv(f, (k, k), (s, s), padding=((p, p), (p, p)),
                                            use_bias=False, dtype=self.dtype, name=name)
    norm = lambda name: nn.BatchNorm(use_running_average=True, epsilon=1e-5,
                                     dtype=self.dtype, name=name)
    out_lengths = _halved(lengths) if self.stride == 2 else lengths
    y = nn.relu(norm('bn1')(conv(self.features, 3, self.stride, 1, 'conv1')(x)))
    y = norm('bn2')(conv(self.features, 3, 1, 1, 'conv2')(_masked(y, out_lengths)))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = norm('downsample_bn')(conv(self.features, 1, self.stride, 0, 'downsample_conv')(x))
    return _masked(nn.relu(y + x), out_lengths), out_lengths


class ResNet18(nn.Module):
  """`[B, 257, T]` spectrograms and their lengths -> `[B, T / 32, 512]` (pooled over frequency)."""
  pool: str = 'mean'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, spec, lengths):
    x = _masked(spec.astype(self.dtype)[..., None], lengths)
    x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=self.dtype,
                             name='bn1')(x))
    lengths = _halved(lengths)
    # Inputs are >= 0 after the ReLU, so zero padding equals PyTorch's -inf padding here.
    x = nn.max_pool(_masked(x, lengths), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    lengths = _halved(lengths)
    x = _masked(x, lengths)
    for name, features, stride in STAGES:
      for k in range(2):
        x, lengths = BasicBlock(features, stride if k == 0 else 1, self.dtype,
                                name=f'{name}_{k}')(x, lengths)
    pooled = x.mean(axis=1) if self.pool == 'mean' else x.max(axis=1)  # over frequency
    return pooled.astype(jnp.float32)


def _torch_name(path: tuple[str, ...]) -> str:
  """Flax parameter path -> the state_dict key stem of the reference (without `audnet.`)."""
  parts = []
  for p in path:
    if p.startswith('layer'):
      parts += p.split('_')  # layer1_0 -> layer1.0
    elif p == 'downsample_conv':
      parts.append('downsample.0')
    elif p == 'downsample_bn':
      parts.append('downsample.1')
    else:
      parts.append(p)
  return '.'.join(parts)


@functools.lru_cache(maxsize=2)
def _expected(pool: str = 'mean'):
  """Shape trees of the params and batch statistics (traced once per process; read only)."""
  shapes = jax.eval_shape(lambda: ResNet18(pool).init(
      jax.random.key(0), jnp.zeros((1, BINS, 64)), jnp.ones((1,), jnp.int32)))
  return shapes


def check_found(path: str | pathlib.Path) -> pathlib.Path:
  """`path`, or a `WeightsError` naming the download when there is no such file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightsError(f'VGGSound checkpoint {path} not found; download {URL}')
  return path


def load_weights(path: str | pathlib.Path) -> dict:
  """Flax variables from VGGSound's `H.pth.tar` ({'model_state_dict': ...}), without torch."""
  path = check_found(path)
  try:
    blob = load_pth(path)
  except (OSError, ValueError) as e:
    raise WeightsError(f'{e}; download {URL}') from e
  state = blob.get('model_state_dict', blob) if isinstance(blob, dict) else None
  if not isinstance(state, dict):
    raise WeightsError(f'{path}: no state_dict inside; download {URL}')
  state = {k.removeprefix('module.').removeprefix('audnet.'): v for k, v in state.items()}
  if 'fc_.weight' in state:
    raise WeightsError(f'{path} is VGGSound model I (NetVLAD pooling); the expert uses model '
                       f'H (average pooling): download {URL}')
  torch_keys = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                'var': 'running_var'}

  def take(key_path, leaf):
    names = tuple(k.key for k in key_path)
    key = f'{_torch_name(names[1:-1])}.{torch_keys[names[-1]]}'
    if key not in state:
      raise WeightsError(f'{path}: key audnet.{key} missing; is this VGGSound model H ({URL})?')
    value = np.asarray(state[key], np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != leaf.shape:
      raise WeightsError(f'{path}: audnet.{key} has shape {value.shape}, ResNet-18 needs '
                         f'{leaf.shape}; is this VGGSound model H ({URL})?')
    return value

  return jax.tree_util.tree_map_with_path(take, _expected())
