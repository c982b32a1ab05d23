"""VGGSound's spectrogram (`vggsound.py` describes what it matches), in NumPy/SciPy.

Kept apart from the network so that the processes that only decode audio and compute the
networks' inputs (`prepare.py`, the features CLI's decoding workers) import no JAX.
"""

import numpy as np

SAMPLE_RATE = 16000
DIM = 512  # the expert's feature size
NPERSEG, NOVERLAP = 512, 353
HOP = NPERSEG - NOVERLAP  # 159
BINS = NPERSEG // 2 + 1  # 257
TILE_SAMPLES = 160000  # the reference's 10 s


def spectrogram(wave: np.ndarray, max_seconds: float | None = None) -> np.ndarray:
  """`[257, frames]` float32 standardised log spectrogram; `[257, 0]` if too short."""
  wave = np.asarray(wave, np.float64)
  if len(wave) < TILE_SAMPLES:
    wave = np.tile(wave, 10)[:TILE_SAMPLES]
  if max_seconds is not None:
    wave = wave[:int(max_seconds * SAMPLE_RATE)]
  if len(wave) < NPERSEG:
    return np.zeros((BINS, 0), np.float32)
  wave = np.clip(wave, -1.0, 1.0)
  import scipy.signal  # pylint: disable=g-import-not-at-top  (about 1 s; imported when used)
  _, _, spec = scipy.signal.spectrogram(wave, SAMPLE_RATE, nperseg=NPERSEG, noverlap=NOVERLAP)
  spec = np.log(spec + 1e-7)
  return ((spec - spec.mean()) / (spec.std() + 1e-9)).astype(np.float32)
