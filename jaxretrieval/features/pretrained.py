"""Batched, jitted extraction of the pretrained experts (VGGish, VGGSound) over many clips.

Frontends run on the host per clip (`prepare.frontends`, NumPy/SciPy as the reference code,
in decoding workers that import no JAX); the networks run in fixed-shape batches so that a
collection compiles each network a few times, not once per file: VGGish batches its 0.96 s
examples across clips (every example has the same shape), VGGSound pads each spectrogram to
a bucket length from a short ladder and masks the padding (see `vggsound`), batching clips
of the same bucket.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.features import handcrafted, vggish, vggsound, vggsound_frontend
from jaxretrieval.features.prepare import Options


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
        batch = np.zeros((rows, vggsound_frontend.BINS, length), np.float32)
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
