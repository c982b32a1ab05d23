"""Batched, jitted extraction of the pretrained experts (VGGish, VGGSound) over many clips.

Frontends run on the host per clip (`frontends`, NumPy/SciPy as the reference code); the
networks run in fixed-shape batches so that a collection compiles each network a few times,
not once per file: VGGish batches its 0.96 s examples across clips (every example has the
same shape), VGGSound pads each spectrogram to a bucket length from a short ladder and
masks the padding (see `vggsound`), batching clips of the same bucket.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.features import handcrafted, vggish, vggsound
from jaxretrieval.features.audio_io import AudioReadError, read_audio

PRETRAINED = {'vggish': vggish.DIM, 'vggsound': vggsound.DIM}


@dataclasses.dataclass(frozen=True)
class Options:
  """What the pretrained experts compute; the defaults are the faithful settings."""
  vggish_output: str = 'postprocessed'  # or 'embedding' (raw 128-d, before PCA)
  vggish_flavour: str = 'tensorflow'  # or 'torchvggish' (ReLU embedding, rounding)
  vggsound_pool: str = 'mean'  # over frequency; or 'max'
  vggsound_max_seconds: float | None = None  # None: the whole clip; 10: the loader's cut
  dtype: str = 'float32'  # or 'bfloat16'
  vggish_batch: int = 64  # examples per VGGish batch
  vggsound_frames: int = 8192  # spectrogram frames per VGGSound batch (x 257 bins)


def frontends(wave: np.ndarray, experts, options: Options) -> dict[str, np.ndarray]:
  """Host-side inputs of the networks for one 16 kHz mono clip (run in worker processes)."""
  out = {}
  if 'vggish' in experts:
    out['vggish'] = vggish.log_mel_examples(wave)
  if 'vggsound' in experts:
    out['vggsound'] = vggsound.spectrogram(wave, options.vggsound_max_seconds)
  return out


def prepare_file(path, experts, options: Options):
  """(features of the own experts and network inputs of the pretrained ones, None) for one
  file, or (None, reason). Runs in a worker process."""
  try:
    out = {}
    own = [e for e in experts if e in handcrafted.DIMS]
    if own:
      wave = read_audio(path)
      out.update({e: handcrafted.EXTRACTORS[e](wave) for e in own})
    if any(e in PRETRAINED for e in experts):
      out.update(frontends(read_audio(path, resampler='kaiser_best'), experts, options))
    return out, None
  except (AudioReadError, ValueError, OSError) as e:
    return None, str(e)


def features(prepared: list[dict[str, np.ndarray]], runners: dict) -> list[dict[str, np.ndarray]]:
  """Every expert of each clip from `prepare_file`'s output: the own experts as computed,
  the pretrained ones run through `runners` in batches. An expert a clip is too short for
  is left out (the clip is missing it, as in the releases)."""
  computed = {e: run([p[e] for p in prepared]) for e, run in runners.items()}
  out = []
  for j, p in enumerate(prepared):
    clip = {e: v for e, v in p.items() if e in handcrafted.DIMS}
    clip.update({e: computed[e][j] for e in runners if computed[e][j] is not None})
    out.append(clip)
  return out


def _rows(n: int, most: int) -> int:
  """Batch rows for `n` items: a power of two up to `most`, so a few shapes are compiled."""
  return min(most, 1 << max(0, n - 1).bit_length())


def bucket(frames: int) -> int:
  """The smallest of 256, 384, 512, 768, 1024, 1536, ... that holds `frames`."""
  size = 256
  while True:
    for step in (size, size * 3 // 2):
      if step >= frames:
        return step
    size *= 2


class VGGishRunner:
  """`[n, 96, 64]` examples per clip -> `[n, 128]` features per clip (None when n = 0)."""

  def __init__(self, params, pca, options: Options):
    self.options = options
    self.params = jax.device_put(params)
    self.pca = pca
    model = vggish.VGGish(relu_embedding=options.vggish_flavour == 'torchvggish',
                          dtype=jnp.dtype(options.dtype))
    self._apply = jax.jit(lambda p, x: model.apply({'params': p}, x))

  def __call__(self, clips: list[np.ndarray]) -> list[np.ndarray | None]:
    counts = [len(c) for c in clips]
    if not sum(counts):
      return [None] * len(clips)
    examples = np.concatenate([c for c in clips if len(c)])
    parts = []
    for i in range(0, len(examples), self.options.vggish_batch):
      chunk = examples[i:i + self.options.vggish_batch]
      batch = np.zeros((_rows(len(chunk), self.options.vggish_batch), 96, 64), np.float32)
      batch[:len(chunk)] = chunk
      parts.append(np.asarray(self._apply(self.params, batch))[:len(chunk)])
    embeddings = np.concatenate(parts)
    if self.options.vggish_output == 'postprocessed':
      embeddings = vggish.postprocess(embeddings, self.pca, self.options.vggish_flavour)
    out, start = [], 0
    for n in counts:
      out.append(embeddings[start:start + n] if n else None)
      start += n
    return out


class VGGSoundRunner:
  """`[257, frames]` spectrograms -> `[frames / 32, 512]` features per clip (None if empty)."""

  def __init__(self, variables, options: Options):
    self.options = options
    self.variables = jax.device_put(variables)
    model = vggsound.ResNet18(pool=options.vggsound_pool, dtype=jnp.dtype(options.dtype))
    self._apply = jax.jit(model.apply)

  def __call__(self, specs: list[np.ndarray]) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = [None] * len(specs)
    groups: dict[int, list[int]] = {}
    for k, s in enumerate(specs):
      if s.shape[1]:
        groups.setdefault(bucket(s.shape[1]), []).append(k)
    for length, members in sorted(groups.items()):
      per_batch = max(1, self.options.vggsound_frames // length)
      for i in range(0, len(members), per_batch):
        chunk = members[i:i + per_batch]
        rows = _rows(len(chunk), per_batch)
        batch = np.zeros((rows, vggsound.BINS, length), np.float32)
        lengths = np.zeros(rows, np.int32)  # unused rows: length 0, all masked
        for row, k in enumerate(chunk):
          batch[row, :, :specs[k].shape[1]] = specs[k]
          lengths[row] = specs[k].shape[1]
        features = np.asarray(self._apply(self.variables, batch, lengths))
        for row, k in enumerate(chunk):
          out[k] = features[row, :vggsound.output_length(specs[k].shape[1])]
    return out


def load_runners(experts, options: Options, vggish_checkpoint: str | None = None,
                 vggish_pca: str | None = None, vggsound_checkpoint: str | None = None) -> dict:
  """Runner per requested pretrained expert; a missing or unfit weight file raises
  `vggish.WeightsError` / `vggsound.WeightsError` naming it and its download URL."""
  # Every weight file is checked to be named and present before any is loaded: reading the
  # TensorFlow checkpoint imports TensorFlow (seconds), wasted when another file is missing.
  if 'vggish' in experts:
    if not vggish_checkpoint:
      raise vggish.WeightsError(f'--experts=vggish needs --vggish_checkpoint (download '
                                f'{vggish.URLS["checkpoint"]})')
    if options.vggish_output == 'postprocessed' and not vggish_pca:
      raise vggish.WeightsError(f'VGGish postprocessing needs --vggish_pca (download '
                                f'{vggish.URLS["pca"]}), or pass --vggish_output=embedding')
  if 'vggsound' in experts:
    if not vggsound_checkpoint:
      raise vggsound.WeightsError(f'--experts=vggsound needs --vggsound_checkpoint (download '
                                  f'{vggsound.URL})')
    vggsound.check_found(vggsound_checkpoint)
  runners = {}
  if 'vggish' in experts:
    pca = vggish.load_pca(vggish_pca) if options.vggish_output == 'postprocessed' else None
    runners['vggish'] = VGGishRunner(vggish.load_weights(vggish_checkpoint), pca, options)
  if 'vggsound' in experts:
    runners['vggsound'] = VGGSoundRunner(vggsound.load_weights(vggsound_checkpoint), options)
  return runners
