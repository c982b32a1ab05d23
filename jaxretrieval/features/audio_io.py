"""Reading audio files as 16 kHz mono float32."""

import math
import pathlib

import numpy as np
import scipy.signal
import soundfile

AUDIO_SUFFIXES = ('.wav', '.flac', '.ogg')


class AudioReadError(Exception):
  """An audio file could not be decoded."""


def read_audio(path: pathlib.Path, sample_rate: int = 16000) -> np.ndarray:
  """Decodes, mixes to mono and resamples to `sample_rate`."""
  try:
    wave, rate = soundfile.read(str(path), dtype='float32', always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError, OSError) as e:
    raise AudioReadError(f'{path}: {e}') from e
  wave = wave.mean(axis=1)
  if wave.size == 0:
    raise AudioReadError(f'{path}: no samples')
  if not np.all(np.isfinite(wave)):
    raise AudioReadError(f'{path}: NaN or Inf samples')
  if rate != sample_rate:
    g = math.gcd(rate, sample_rate)
    wave = scipy.signal.resample_poly(wave, sample_rate // g, rate // g).astype(np.float32)
  return wave


def write_wav(path: pathlib.Path, wave: np.ndarray, sample_rate: int = 16000) -> None:
  """16-bit PCM WAV."""
  soundfile.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype='PCM_16')
