"""What the features CLI's decoding workers run for one file: decode it, compute the own
experts and the pretrained networks' inputs (`prepare_file`). NumPy/SciPy only: a worker
process imports no JAX (the networks run in the main process, `pretrained.py`).
"""

import dataclasses

import numpy as np

from jaxretrieval.features import handcrafted, vggish_frontend, vggsound_frontend
from jaxretrieval.features.audio_io import AudioReadError, read_audio

PRETRAINED = {'vggish': vggish_frontend.DIM, 'vggsound': vggsound_frontend.DIM}


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
    out['vggish'] = vggish_frontend.log_mel_examples(wave)
  if 'vggsound' in experts:
    out['vggsound'] = vggsound_frontend.spectrogram(wave, options.vggsound_max_seconds)
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
