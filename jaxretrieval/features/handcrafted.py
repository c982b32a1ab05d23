"""The two audio experts computed by this project from waveforms (16 kHz mono).

* `logmel`: VGGish-like. 25 ms Hann windows every 10 ms, 64 HTK-mel bands 125-7500 Hz,
  log(mel + 0.01); grouped into non-overlapping 0.96 s patches (96 frames) and summarised
  per patch by the mean and standard deviation of every band: `[patches, 128]`.
* `spectral`: a finer, different view. 200 ms windows every 100 ms: 20 MFCCs (40 mel
  bands), log RMS energy, zero-crossing rate, spectral centroid, bandwidth, roll-off and
  flatness, and the frame-to-frame deltas of those last six: `[frames, 32]`.
"""

import pathlib

import numpy as np

from jaxretrieval.data import registry
from jaxretrieval.features import signal
from jaxretrieval.features.audio_io import AudioReadError, read_audio

SAMPLE_RATE = 16000
DIMS = {name: registry.EXPERTS[name].dim for name in ('logmel', 'spectral')}


def logmel(wave: np.ndarray) -> np.ndarray:
  """`[patches, 128]` log-mel statistics over 0.96 s patches."""
  power = signal.power_spectrum(signal.frames(wave, 400, 160), 512)
  mel = power @ signal.mel_filterbank(SAMPLE_RATE, 512, 64, 125.0, 7500.0)
  log_mel = np.log(mel + 0.01)  # [frames, 64]
  patches = max(1, len(log_mel) // 96)
  if len(log_mel) < 96:
    log_mel = np.pad(log_mel, ((0, 96 - len(log_mel)), (0, 0)), mode='edge')
  blocks = log_mel[:patches * 96].reshape(patches, 96, 64)
  return np.concatenate([blocks.mean(axis=1), blocks.std(axis=1)], axis=1).astype(np.float32)


def spectral(wave: np.ndarray) -> np.ndarray:
  """`[frames, 32]` MFCCs and spectral descriptors every 100 ms."""
  framed = signal.frames(wave, 3200, 1600)
  power = signal.power_spectrum(framed, 4096)
  mel = power @ signal.mel_filterbank(SAMPLE_RATE, 4096, 40, 60.0, 7800.0)
  mfcc = np.log(mel + 1e-6) @ signal.dct_matrix(40, 20)  # [frames, 20]
  rms = np.log(np.sqrt(np.mean(framed ** 2, axis=1, keepdims=True)) + 1e-5)
  scalars = np.concatenate([rms, signal.zero_crossing_rate(framed),
                            signal.spectral_descriptors(power)], axis=1)  # [frames, 6]
  deltas = np.diff(scalars, axis=0, prepend=scalars[:1])
  return np.concatenate([mfcc, scalars, deltas], axis=1).astype(np.float32)


EXTRACTORS = {'logmel': logmel, 'spectral': spectral}


def extract(wave: np.ndarray) -> dict[str, np.ndarray]:
  """Every expert of a 16 kHz mono waveform."""
  wave = np.asarray(wave, np.float32)
  return {name: fn(wave) for name, fn in EXTRACTORS.items()}


def extract_file(path: pathlib.Path) -> tuple[dict[str, np.ndarray] | None, str | None]:
  """(experts, None) for a readable audio file, (None, reason) otherwise."""
  try:
    return extract(read_audio(path)), None
  except (AudioReadError, ValueError) as e:
    return None, str(e)
