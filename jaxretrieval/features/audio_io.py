"""Reading audio files as 16 kHz mono float32."""

import math
import pathlib
import struct

import numpy as np
import soundfile

AUDIO_SUFFIXES = ('.wav', '.flac', '.ogg')
# 'poly': SciPy polyphase (the project's own experts); 'kaiser_best': resampy's filter, what
# the official VGGish code resamples with (`vggish_input.waveform_to_examples`).
RESAMPLERS = ('poly', 'kaiser_best')


class AudioReadError(Exception):
  """An audio file could not be decoded."""


def _check_wav_complete(path: pathlib.Path) -> None:
  """Refuses a RIFF/WAVE file whose data chunk is shorter than its header declares.

  libsndfile reads such a file silently as shorter audio; a cut-off download should be
  reported, not indexed. Streams written with an unknown size (0 or 0xFFFFFFFF) pass.
  """
  size = path.stat().st_size
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
      return
    offset = 12
    while offset + 8 <= size:
      f.seek(offset)
      chunk, length = struct.unpack('<4sI', f.read(8))
      if chunk == b'data':
        if length not in (0, 0xFFFFFFFF) and offset + 8 + length > size:
          raise AudioReadError(f'{path}: truncated: the header declares {length} bytes of '
                               f'audio, the file holds {size - offset - 8}; copy it again')
        return
      offset += 8 + length + (length & 1)


def read_audio(path: pathlib.Path, sample_rate: int = 16000,
               resampler: str = 'poly') -> np.ndarray:
  """Decodes, mixes to mono (mean of the channels) and resamples to `sample_rate`."""
  if not path.is_file():
    raise AudioReadError(f'{path}: not a file')
  if path.suffix.lower() == '.wav':
    _check_wav_complete(path)
  try:
    with open(path, 'rb') as f:  # a file object: names that are not UTF-8 open too
      wave, rate = soundfile.read(f, dtype='float64', always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError, OSError) as e:
    raise AudioReadError(f'{path}: {e}') from e
  wave = wave.mean(axis=1)
  if wave.size == 0:
    raise AudioReadError(f'{path}: no samples')
  if not np.all(np.isfinite(wave)):
    raise AudioReadError(f'{path}: NaN or Inf samples')
  if rate != sample_rate:
    if resampler == 'kaiser_best':
      import resampy  # pylint: disable=g-import-not-at-top  (numba start-up only when needed)
      if int(len(wave) * sample_rate / rate) < 1:
        raise AudioReadError(f'{path}: {len(wave)} samples at {rate} Hz is too short to resample')
      wave = resampy.resample(wave, rate, sample_rate, filter='kaiser_best')
    else:
      import scipy.signal  # pylint: disable=g-import-not-at-top  (about 1 s; 16 kHz files skip it)
      g = math.gcd(rate, sample_rate)
      wave = scipy.signal.resample_poly(wave, sample_rate // g, rate // g)
  return wave.astype(np.float32)


def write_wav(path: pathlib.Path, wave: np.ndarray, sample_rate: int = 16000) -> None:
  """16-bit PCM WAV."""
  soundfile.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype='PCM_16')
