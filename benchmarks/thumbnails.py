r"""Search thumbnails: how fast building draws them, and how large they are.

  python -m benchmarks.thumbnails [--clips=200] [--seconds=10] [--rounds=3]

Times `build.audio_file_summary` (an item's duration and PNG spectrogram thumbnail, what
building an index and `--add` do for each item with an audio file) over synthetic wav
clips (tones and noise, 16 kHz mono), on one thread and on the thread pool building uses
(one thread per core), alternating round by round; reports clips/s and the mean PNG size.
"""

import concurrent.futures
import os
import pathlib
import tempfile

from absl import app, flags
import numpy as np
import soundfile

from benchmarks.common import alternate, emit, machine, table
from jaxretrieval.search.build import audio_file_summary

_CLIPS = flags.DEFINE_integer('clips', 200, 'number of audio files')
_SECONDS = flags.DEFINE_float('seconds', 10.0, 'length of each clip')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'timed rounds of each contender')


def write_clips(folder: pathlib.Path, n: int, seconds: float, rate: int = 16000) -> list[str]:
  """`n` wav files of a tone at a random pitch over quiet noise."""
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * rate)) / rate
  paths = []
  for i in range(n):
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 6000) * t) + 0.01 * rng.normal(size=len(t))
    paths.append(str(folder / f'clip_{i:05d}.wav'))
    soundfile.write(paths[-1], wave.astype(np.float32), rate)
  return paths


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as folder:
    paths = write_clips(pathlib.Path(folder), _CLIPS.value, _SECONDS.value)
    sizes = [len(png) for _, png in map(audio_file_summary, paths)]  # also warms the caches
    workers = os.cpu_count()

    def pooled():
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(audio_file_summary, paths))
    times = alternate({'1 thread': lambda: [audio_file_summary(p) for p in paths],
                       f'{workers} threads': pooled}, _ROUNDS.value)
  rows = []
  for name, t in times.items():
    rows.append({'benchmark': 'thumbnails', 'threads': name, 'clips': len(paths),
                 'clip_seconds': _SECONDS.value, 'clips_per_s': len(paths) / t['median_s'],
                 'ms_per_clip': 1000 * t['median_s'] / len(paths),
                 'mean_png_bytes': float(np.mean(sizes)), **t, **machine()})
    emit(rows[-1])
  print(table(rows, ['threads', 'clips', 'clip_seconds', 'clips_per_s', 'ms_per_clip',
                     'mean_png_bytes']))


if __name__ == '__main__':
  app.run(main)
