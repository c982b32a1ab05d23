"""Signal processing in NumPy: framing, power spectra, mel filterbanks, MFCCs, descriptors."""

import functools

import numpy as np


def frames(wave: np.ndarray, length: int, hop: int) -> np.ndarray:
  """`[n, length]` frames of a 1-D signal; the tail is zero-padded to a whole frame."""
  n = 1 + max(0, int(np.ceil((len(wave) - length) / hop)))
  padded = np.zeros((n - 1) * hop + length, np.float32)
  padded[:len(wave)] = wave[:len(padded)]
  index = np.arange(length)[None, :] + hop * np.arange(n)[:, None]
  return padded[index]


def power_spectrum(frames_: np.ndarray, n_fft: int) -> np.ndarray:
  """|FFT|^2 of Hann-windowed frames: `[n, n_fft // 2 + 1]`."""
  window = np.hanning(frames_.shape[1] + 2)[1:-1].astype(np.float32)  # periodic-like Hann
  spectrum = np.fft.rfft(frames_ * window, n=n_fft, axis=1)
  return (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)


def hz_to_mel(hz):
  return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, bands: int, low_hz: float,
                   high_hz: float) -> np.ndarray:
  """Triangular HTK-mel filters `[n_fft // 2 + 1, bands]` (VGGish's construction)."""
  bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
  edges = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), bands + 2)
  mel = hz_to_mel(bins)[:, None]
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (mel - lower) / (centre - lower)
  falling = (upper - mel) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights[0] = 0.0  # no DC
  return weights.astype(np.float32)


@functools.lru_cache(maxsize=4)
def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Orthonormal DCT-II `[n_in, n_out]`."""
  k = np.arange(n_out)[None, :]
  n = np.arange(n_in)[:, None]
  basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
  basis[:, 0] /= np.sqrt(2.0)
  return basis.astype(np.float32)


def spectral_descriptors(power: np.ndarray) -> np.ndarray:
  """Per frame: centroid, bandwidth, 85% roll-off (fractions of Nyquist) and flatness."""
  freqs = np.linspace(0.0, 1.0, power.shape[1], dtype=np.float32)[None, :]
  total = power.sum(axis=1, keepdims=True) + 1e-10
  centroid = (power * freqs).sum(axis=1, keepdims=True) / total
  bandwidth = np.sqrt((power * (freqs - centroid) ** 2).sum(axis=1, keepdims=True) / total)
  cumulative = np.cumsum(power, axis=1) / total
  rolloff = (np.argmax(cumulative >= 0.85, axis=1)[:, None] / (power.shape[1] - 1))
  log_power = np.log(power + 1e-10)
  flatness = np.exp(log_power.mean(axis=1, keepdims=True)) / (power.mean(axis=1, keepdims=True)
                                                               + 1e-10)
  return np.concatenate([centroid, bandwidth, rolloff, flatness], axis=1).astype(np.float32)


def zero_crossing_rate(frames_: np.ndarray) -> np.ndarray:
  signs = np.signbit(frames_)
  return np.mean(signs[:, 1:] != signs[:, :-1], axis=1, keepdims=True).astype(np.float32)
