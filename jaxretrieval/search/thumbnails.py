"""Spectrogram thumbnails of sounds, rendered once at index time for the search page.

A thumbnail is a small log-mel spectrogram (time left to right, low frequencies at the
bottom) in the viridis colour map, encoded with NumPy and zlib as a PNG of `STEPS` palette
colours (a few kilobytes, against about 10 for full RGB: an index stores one per item).
Levels are in decibels below the clip's loudest cell (a clip quieter than `QUIETEST_DB`
keeps that as its top, so silence stays uniformly dark), over a `RANGE_DB` dynamic range.
Rendering depends only on the audio samples, so the same file always gives the same bytes.
"""

import struct
import zlib

import numpy as np
import soundfile

from jaxretrieval.features import signal

WIDTH, HEIGHT = 160, 48
STEPS = 32  # colours of the palette, from silent to loudest
RANGE_DB = 70.0
QUIETEST_DB = -60.0  # decibels relative to a full-scale sine
MAX_SECONDS = 600.0  # longer files are drawn from their first ten minutes
# Viridis (the perceptually uniform map of matplotlib), sampled at 0, 1/4, 1/2, 3/4 and 1.
VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                    [253, 231, 37]], np.float64)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def fft_size(sample_rate: int) -> int:
  """The power of two giving frequency bins of at most 25 Hz (the low mel bands stay filled)."""
  return 1 << int(np.ceil(np.log2(sample_rate / 25.0)))


def levels(wave: np.ndarray, sample_rate: int, width: int = WIDTH,
           height: int = HEIGHT) -> np.ndarray:
  """`[height, width]` spectrogram levels in [0, 1] of a mono signal: row 0 is the highest of
  `height` HTK-mel bands from 0 Hz to Nyquist, each column the mean power of its share of
  the frames (a clip shorter than `width` frames repeats frames)."""
  n_fft = fft_size(sample_rate)
  frames = signal.frames(np.asarray(wave, np.float32), n_fft, n_fft // 4)
  bank = signal.mel_filterbank(sample_rate, n_fft, height, 0.0, sample_rate / 2.0)
  # Scaled so that a full-scale sine peaks near 0 dB (the window's gain at one frequency).
  gain = (np.hanning(n_fft + 2)[1:-1].sum() / 2.0) ** 2
  power = signal.power_spectrum(frames, n_fft)  # [frames, bins]
  starts = np.floor(np.arange(width) * len(power) / width).astype(np.int64)
  counts = np.maximum(np.diff(np.append(starts, len(power))), 1)
  # Frames averaged into columns before the (linear) mel filters: [width, height]. einsum,
  # not a BLAS matmul: BLAS threads contend with the threads drawing other thumbnails.
  columns = np.einsum('tf,fm->tm', np.add.reduceat(power, starts, axis=0) / counts[:, None],
                      bank) / gain
  db = 10.0 * np.log10(np.maximum(columns, 10.0 ** ((QUIETEST_DB - RANGE_DB) / 10.0)))
  top = max(float(db.max()), QUIETEST_DB)
  return np.clip((db - (top - RANGE_DB)) / RANGE_DB, 0.0, 1.0).T[::-1]


def colour(values: np.ndarray) -> np.ndarray:
  """uint8 RGB `[..., 3]` of values in [0, 1] through the viridis map."""
  position = np.clip(values, 0.0, 1.0) * (len(VIRIDIS) - 1)
  low = np.minimum(position.astype(np.int64), len(VIRIDIS) - 2)
  t = (position - low)[..., None]
  return np.round(VIRIDIS[low] * (1 - t) + VIRIDIS[low + 1] * t).astype(np.uint8)


def quantise(values: np.ndarray) -> np.ndarray:
  """The palette index (uint8, 0 to STEPS - 1) of each value in [0, 1]."""
  return np.round(np.clip(values, 0.0, 1.0) * (STEPS - 1)).astype(np.uint8)


def png(values: np.ndarray) -> bytes:
  """The PNG bytes of `[height, width]` values in [0, 1]: 8-bit palette indices into
  `STEPS` viridis colours, no filters, no timestamps."""
  height, width = values.shape

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))
  rows = np.concatenate([np.zeros((height, 1), np.uint8), quantise(values)], axis=1)
  header = struct.pack('>IIBBBBB', width, height, 8, 3, 0, 0, 0)  # 8-bit palette indices
  palette = colour(np.arange(STEPS) / (STEPS - 1))
  return (PNG_SIGNATURE + chunk(b'IHDR', header) + chunk(b'PLTE', palette.tobytes())
          + chunk(b'IDAT', zlib.compress(rows.tobytes(), 9)) + chunk(b'IEND', b''))


def render(path: str) -> bytes:
  """The PNG thumbnail of an audio file (channels averaged), or b'' when there is no file
  or it cannot be read."""
  if not path:
    return b''
  try:
    with soundfile.SoundFile(path) as f:
      wave = f.read(int(min(f.frames, MAX_SECONDS * f.samplerate)), dtype='float32',
                    always_2d=True)
      sample_rate = f.samplerate
  except (RuntimeError, OSError):  # soundfile.LibsndfileError: missing or unreadable
    return b''
  return png(levels(wave.mean(axis=1), sample_rate))
