r"""Extraction throughput of the paper's experts against the reference implementations.

  python -m benchmarks.feature_extraction [--clips=16] [--seconds=10] [--rounds=3]

Both sides get the same 16 kHz mono clips (noise and tones, `--seconds` long), every core
(the defaults of XLA, TensorFlow and torch; the count is recorded), the same batching,
and are timed alternately, round after round, so that a busy shared machine slows both
alike; the median round is reported. Weights are random (timing does not depend on them).

* VGGish. Ours: `vggish_frontend.log_mel_examples` (NumPy) + the jitted Flax network
  (`pretrained.VGGishRunner`, 64-example batches) + PCA/quantisation. Reference: the
  official steps, `vggish_input` written out in NumPy (`tests/features/reference_models`) + the
  official TensorFlow graph (`tests/features/reference_models.OfficialVGGish`, all
  examples in one `session.run`) + the same postprocessing.
* VGGSound. Ours: `vggsound_frontend.spectrogram` (SciPy, as the reference) + the jitted Flax
  ResNet-18 (`pretrained.VGGSoundRunner`). Reference: the same spectrogram + model H in
  torch (`tests/features/reference_models.torch_resnet18`), all clips in one batch, under
  `torch.no_grad`.

Reported per expert and side: clips/s and the real-time factor (seconds of audio per
second of computation), and ours / reference.
"""

import statistics
import time

from absl import app, flags
import jax
import numpy as np

from benchmarks.common import emit, machine, table

_CLIPS = flags.DEFINE_integer('clips', 16, 'clips per round')
_SECONDS = flags.DEFINE_float('seconds', 10.0, 'length of each clip')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'timed rounds per side (after one warm-up)')


def make_clips(n: int, seconds: float) -> list[np.ndarray]:
  """Noise with a tone, each clip different."""
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * 16000)) / 16000
  return [(0.1 * rng.normal(size=t.size) + 0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t))
          .astype(np.float32) for k in range(n)]


def vggish_sides():
  """(ours, reference): functions of the clips returning their postprocessed features."""
  from jaxretrieval.features import prepare, pretrained, vggish, vggish_frontend
  from tests.features.reference_models import OfficialVGGish, official_examples
  official = OfficialVGGish()
  params = jax.tree.map(np.asarray, vggish.VGGish().init(
      jax.random.key(0), np.zeros((1, 96, 64), np.float32))['params'])
  rng = np.random.default_rng(1)
  pca = (np.linalg.qr(rng.normal(size=(128, 128)))[0], rng.normal(size=128))
  runner = pretrained.VGGishRunner(params, pca, prepare.Options())

  def ours(clips):
    return runner([vggish_frontend.log_mel_examples(c) for c in clips])

  def reference(clips):
    examples = np.concatenate([official_examples(c.astype(np.float64)) for c in clips])
    return vggish.postprocess(official(examples.astype(np.float32)), pca)  # NumPy, as official

  return ours, reference


def vggsound_sides():
  """(ours, reference): functions of the clips returning model H's features."""
  import torch

  from jaxretrieval.features import prepare, pretrained, vggsound, vggsound_frontend
  from tests.features.reference_models import torch_resnet18
  model = torch_resnet18()
  variables = jax.tree.map(np.asarray, vggsound.ResNet18().init(
      jax.random.key(0), np.zeros((1, vggsound_frontend.BINS, 64), np.float32),
      np.ones(1, np.int32)))
  runner = pretrained.VGGSoundRunner(variables, prepare.Options())

  def ours(clips):
    return runner([vggsound_frontend.spectrogram(c) for c in clips])

  def reference(clips):
    specs = np.stack([vggsound_frontend.spectrogram(c) for c in clips])  # the reference's own SciPy
    with torch.no_grad():
      return model.audnet.features(torch.from_numpy(specs)[:, None]).mean(dim=2).numpy()

  return ours, reference


def alternate(sides, clips, rounds: int) -> list[float]:
  """Median seconds of each side over `rounds` alternating rounds (after one warm-up)."""
  for side in sides:
    side(clips)
  times = [[] for _ in sides]
  for _ in range(rounds):
    for k, side in enumerate(sides):
      start = time.perf_counter()
      side(clips)
      times[k].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def main(argv):
  del argv
  import torch
  clips = make_clips(_CLIPS.value, _SECONDS.value)
  audio = _CLIPS.value * _SECONDS.value
  rows = []
  for expert, build in (('vggish', vggish_sides), ('vggsound', vggsound_sides)):
    ours_s, ref_s = alternate(build(), clips, _ROUNDS.value)
    for side, seconds in (('ours (JAX/Flax)', ours_s), ('reference', ref_s)):
      row = {'benchmark': 'feature_extraction', 'expert': expert, 'side': side,
             'clips': _CLIPS.value, 'clip_seconds': _SECONDS.value, 'median_s': seconds,
             'clips_per_s': _CLIPS.value / seconds, 'real_time_factor': audio / seconds,
             'torch_threads': torch.get_num_threads(), **machine()}
      rows.append(row)
      emit(row)
    rows[-2]['speed-up'] = ref_s / ours_s
  print(table(rows, ['expert', 'side', 'clips', 'median_s', 'clips_per_s',
                     'real_time_factor', 'speed-up']))


if __name__ == '__main__':
  app.run(main)
