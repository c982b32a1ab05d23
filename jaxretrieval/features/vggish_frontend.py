"""VGGish's frontend (`vggish.py` describes what it matches): 16 kHz mono waveform ->
`[examples, 96, 64]` log-mel examples, in NumPy.

Kept apart from the network so that the processes that only decode audio and compute the
networks' inputs (`prepare.py`, the features CLI's decoding workers) import no JAX.
"""

import functools

import numpy as np

SAMPLE_RATE = 16000
DIM = 128  # the expert's feature size
WINDOW, HOP, FFT = 400, 160, 512  # 25 ms, 10 ms, next power of two
BANDS, LOW_HZ, HIGH_HZ, LOG_OFFSET = 64, 125.0, 7500.0, 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 15,600: shorter clips give no example


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
  """`[n, length, ...]` frames without padding: n = 1 + (len - length) // hop, or 0."""
  n = 0 if len(x) < length else 1 + (len(x) - length) // hop
  index = np.arange(length)[None, :] + hop * np.arange(n)[:, None]
  return x[index]


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
  """`[257, 64]` triangular HTK-mel weights (`spectrogram_to_mel_matrix`), float64."""
  def mel(hz):
    return 1127.0 * np.log(1.0 + hz / 700.0)
  bins = mel(np.linspace(0.0, SAMPLE_RATE / 2.0, FFT // 2 + 1))[:, None]
  edges = np.linspace(mel(LOW_HZ), mel(HIGH_HZ), BANDS + 2)
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  weights = np.maximum(0.0, np.minimum((bins - lower) / (centre - lower),
                                       (upper - bins) / (upper - centre)))
  weights[0] = 0.0  # the DC bin takes no part
  return weights


def log_mel_examples(wave: np.ndarray) -> np.ndarray:
  """`[examples, 96, 64]` float32 log-mel examples of a 16 kHz mono waveform."""
  wave = np.asarray(wave, np.float64)
  frames = _frames(wave, WINDOW, HOP)
  window = 0.5 - 0.5 * np.cos(2 * np.pi / WINDOW * np.arange(WINDOW))  # periodic Hann
  magnitude = np.abs(np.fft.rfft(frames * window, FFT))
  log_mel = np.log(magnitude @ mel_matrix() + LOG_OFFSET)
  return _frames(log_mel, EXAMPLE_FRAMES, EXAMPLE_FRAMES).astype(np.float32)
