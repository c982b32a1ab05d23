"""Spectrogram thumbnails: what they show, and the PNG files they are."""

import struct
import zlib

import numpy as np
import pytest
import soundfile

from jaxretrieval.search import thumbnails


def tone(hz: float, seconds: float = 2.0, sample_rate: int = 16000, amplitude: float = 0.5):
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def decode_png(data: bytes) -> np.ndarray:
  """The `[height, width, 3]` RGB pixels of an 8-bit palette PNG without filters, checking
  every chunk's CRC on the way."""
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  chunks, at = {}, 8
  while at < len(data):
    length, kind = struct.unpack('>I4s', data[at:at + 8])
    body = data[at + 8:at + 8 + length]
    assert struct.unpack('>I', data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(
        kind + body)
    chunks[kind] = chunks.get(kind, b'') + body
    at += 12 + length
  assert list(chunks)[-1] == b'IEND'
  width, height, depth, colour_type = struct.unpack('>IIBB', chunks[b'IHDR'][:10])
  assert (depth, colour_type) == (8, 3)
  palette = np.frombuffer(chunks[b'PLTE'], np.uint8).reshape(-1, 3)
  rows = np.frombuffer(zlib.decompress(chunks[b'IDAT']), np.uint8).reshape(height, -1)
  assert (rows[:, 0] == 0).all() and rows.shape[1] == width + 1  # no filter on any row
  return palette[rows[:, 1:]]


def mel(hz):
  return 2595.0 * np.log10(1.0 + hz / 700.0)  # the HTK mel scale


@pytest.mark.parametrize('hz,sample_rate', [(440.0, 16000), (1000.0, 16000), (3000.0, 16000),
                                            (6000.0, 44100)])
def test_a_tone_draws_a_bright_band_at_its_mel_row(hz, sample_rate):
  levels = thumbnails.levels(tone(hz, sample_rate=sample_rate), sample_rate)
  assert levels.shape == (thumbnails.HEIGHT, thumbnails.WIDTH)
  # Band centres equally spaced in mel from 0 Hz to Nyquist; the top row is the highest.
  centres = np.linspace(0.0, mel(sample_rate / 2), thumbnails.HEIGHT + 2)[1:-1]
  row = thumbnails.HEIGHT - 1 - int(np.argmin(abs(centres - mel(hz))))
  assert (abs(levels.argmax(axis=0) - row) <= 1).all()  # in every column
  assert levels[row].min() > 0.9
  far = np.abs(np.arange(thumbnails.HEIGHT) - row) > 4
  assert levels[far].max() < 0.5


def test_a_sound_starting_midway_fills_only_the_right_half():
  wave = np.concatenate([np.zeros(16000, np.float32), tone(1000.0, 1.0)])
  levels = thumbnails.levels(wave, 16000)
  assert levels[:, :75].max() == 0.0 and levels[:, 85:].max() > 0.9


def test_silence_draws_a_uniform_dark_image(tmp_path):
  soundfile.write(tmp_path / 'silence.wav', np.zeros(16000, np.float32), 16000)
  pixels = decode_png(thumbnails.render(str(tmp_path / 'silence.wav')))
  assert pixels.shape == (thumbnails.HEIGHT, thumbnails.WIDTH, 3)
  assert (pixels == pixels[0, 0]).all()
  assert (pixels[0, 0] == thumbnails.colour(np.array(0.0))).all()  # the map's darkest colour


def test_a_thumbnail_is_a_deterministic_png_of_the_levels(tmp_path):
  rng = np.random.default_rng(0)
  wave = np.stack([tone(700.0) + 0.05 * rng.normal(size=32000).astype(np.float32),
                   tone(700.0)], axis=1)  # stereo: the channels are averaged
  soundfile.write(tmp_path / 'a.wav', wave, 16000, subtype='FLOAT')
  soundfile.write(tmp_path / 'b.flac', wave, 16000)
  first = thumbnails.render(str(tmp_path / 'a.wav'))
  assert thumbnails.render(str(tmp_path / 'a.wav')) == first
  steps = thumbnails.STEPS - 1
  levels = np.round(thumbnails.levels(wave.mean(axis=1), 16000) * steps) / steps
  np.testing.assert_array_equal(decode_png(first), thumbnails.colour(levels))
  assert len(first) < 6000  # small: the index stores one per item
  flac = decode_png(thumbnails.render(str(tmp_path / 'b.flac')))  # 16-bit: nearly the same
  assert np.mean(np.abs(flac.astype(int) - thumbnails.colour(levels)).max(axis=-1) > 0) < 0.02


def test_no_thumbnail_without_a_readable_audio_file(tmp_path):
  (tmp_path / 'not_audio.wav').write_bytes(b'RIFF....WAVEjunk')
  for path in ('', str(tmp_path / 'absent.wav'), str(tmp_path / 'not_audio.wav')):
    assert thumbnails.render(path) == b''
