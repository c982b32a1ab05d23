"""Signal processing and the computed experts."""

import numpy as np
import pytest

from jaxretrieval.features import signal
from jaxretrieval.features.handcrafted import DIMS, extract, logmel, spectral

SR = 16000


def tone(freq, seconds=3.0, amplitude=0.3):
  t = np.arange(int(seconds * SR)) / SR
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_frames_cover_the_signal():
  x = np.arange(10, dtype=np.float32)
  f = signal.frames(x, 4, 3)
  assert f.shape == (3, 4)
  np.testing.assert_array_equal(f[-1], [6, 7, 8, 9])
  assert signal.frames(np.ones(2, np.float32), 4, 3).shape == (1, 4)


def test_mel_filterbank_partitions_the_band():
  bank = signal.mel_filterbank(SR, 512, 64, 125.0, 7500.0)
  assert bank.shape == (257, 64)
  bins = np.linspace(0, SR / 2, 257)
  inside = (bins > 200) & (bins < 7000)
  # Overlapping triangles: each bin inside the band is covered by at most two filters.
  assert np.all((bank[inside] > 0).sum(axis=1) <= 2) and np.all(bank[inside].sum(axis=1) > 0)
  assert np.all(np.diff(bins @ bank / bank.sum(axis=0)) > 0)  # centres increase


def test_dct_is_orthonormal():
  d = signal.dct_matrix(40, 40)
  np.testing.assert_allclose(d.T @ d, np.eye(40), atol=1e-5)


@pytest.mark.parametrize('freq', [300.0, 2500.0])
def test_logmel_peaks_at_the_tone_band(freq):
  feats = logmel(tone(freq))
  assert feats.shape == (3, DIMS['logmel'])
  bank = signal.mel_filterbank(SR, 512, 64, 125.0, 7500.0)
  centres = np.linspace(0, SR / 2, 257) @ bank / bank.sum(axis=0)
  peak = int(np.argmax(feats[0, :64]))
  assert abs(centres[peak] - freq) < 0.15 * freq


def test_spectral_descriptors_track_pitch_and_loudness():
  low, high = spectral(tone(300.0)), spectral(tone(3000.0))
  quiet = spectral(tone(3000.0, amplitude=0.01))
  assert low.shape[1] == DIMS['spectral'] and low.shape[0] == 29
  centroid = 22  # 20 MFCCs, log RMS, zero-crossing rate, then the centroid
  assert high[5, centroid] > 5 * low[5, centroid]
  np.testing.assert_allclose(high[5, centroid], 3000 / 8000, atol=0.03)
  assert quiet[5, 20] < high[5, 20] - 2  # log RMS
  zcr = 21
  np.testing.assert_allclose(high[5, zcr], 2 * 3000 / SR, atol=0.01)


def test_extract_is_deterministic_and_finite():
  wave = np.random.default_rng(0).normal(size=SR // 2).astype(np.float32) * 0.1
  a, b = extract(wave), extract(wave)
  for name in DIMS:
    np.testing.assert_array_equal(a[name], b[name])
    assert np.all(np.isfinite(a[name]))
  assert a['logmel'].shape == (1, 128)  # a clip shorter than 0.96 s still has one patch
