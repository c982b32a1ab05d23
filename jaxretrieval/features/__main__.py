r"""Computes the project's audio experts for a folder of audio files.

  python -m jaxretrieval.features --audio-dir DIR --out OUT \
      [--captions captions.csv --word-vectors VECTORS]

Writes OUT in the release layout (see `release_writer`): every readable file is in
`all_list.txt`; with captions (CSV columns `file,caption[,split]`, one row per caption,
`file` relative to DIR) the captioned files also form `train/val/test` lists, from the
`split` column or a seeded split. Unreadable files are reported by name (also in
OUT/failed_files.txt) and the rest are processed.
"""

import collections
import concurrent.futures
import multiprocessing
import csv
import os
import pathlib
import sys
import time

from absl import app
from absl import flags
import numpy as np

from jaxretrieval.features.audio_io import AUDIO_SUFFIXES
from jaxretrieval.features.experts import extract_file
from jaxretrieval.features.release_writer import Item, write_release
from jaxretrieval.text import WordVectors

_AUDIO_DIR = flags.DEFINE_string('audio_dir', None, 'folder of wav/flac/ogg files', required=True)
_OUT = flags.DEFINE_string('out', None, 'output folder (release layout)', required=True)
_CAPTIONS = flags.DEFINE_string('captions', None, 'CSV with columns file,caption[,split]')
_WORD_VECTORS = flags.DEFINE_string('word_vectors', None, 'word vectors for the captions: '
                                    'word2vec .bin/.txt or a word_vectors.npz (or older .pkl) table')
_VAL = flags.DEFINE_float('val_fraction', 0.1, 'without a split column: share of val items')
_TEST = flags.DEFINE_float('test_fraction', 0.1, 'without a split column: share of test items')
_SEED = flags.DEFINE_integer('seed', 0, 'seed of the split')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1, 'extraction processes')

SPLITS = ('train', 'val', 'test')


def read_captions(path: pathlib.Path) -> tuple[dict[str, list[str]], dict[str, str]]:
  """file -> captions, and file -> split where the CSV gives one."""
  captions, splits = collections.defaultdict(list), {}
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f)
    missing = {'file', 'caption'} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f'{path}: missing column(s) {sorted(missing)}; expected file,caption[,split]')
    for line, row in enumerate(reader, start=2):
      captions[row['file']].append(row['caption'])
      split = (row.get('split') or '').strip()
      if split:
        if split not in SPLITS:
          raise ValueError(f'{path}:{line}: split {split!r} not in {SPLITS}')
        splits[row['file']] = split
  return dict(captions), splits


def assign_splits(ids: list[str], given: dict[str, str], val: float, test: float,
                  seed: int) -> dict[str, list[str]]:
  """The CSV's splits, or a seeded val/test/train split of `ids`."""
  if given:
    return {s: [i for i in ids if given.get(i) == s] for s in SPLITS}
  order = np.random.default_rng(seed).permutation(len(ids))
  n_val, n_test = int(round(val * len(ids))), int(round(test * len(ids)))
  picked = {'val': order[:n_val], 'test': order[n_val:n_val + n_test],
            'train': order[n_val + n_test:]}
  return {s: [ids[i] for i in sorted(picked[s])] for s in SPLITS}


def main(argv):
  del argv
  audio_dir, out = pathlib.Path(_AUDIO_DIR.value), pathlib.Path(_OUT.value)
  files = sorted(p for p in audio_dir.rglob('*') if p.suffix.lower() in AUDIO_SUFFIXES)
  if not files:
    sys.exit(f'no {"/".join(AUDIO_SUFFIXES)} files under {audio_dir}')
  captions, given = ({}, {}) if _CAPTIONS.value is None else read_captions(
      pathlib.Path(_CAPTIONS.value))
  words = None
  if captions:
    if _WORD_VECTORS.value is None:
      sys.exit('--captions needs --word-vectors (word2vec .bin/.txt, or word_vectors.npz)')
    words = WordVectors.load(_WORD_VECTORS.value)
  ids = [p.relative_to(audio_dir).as_posix() for p in files]
  unknown = sorted(set(captions) - set(ids))
  if unknown:
    print(f'captions name {len(unknown)} file(s) not found under {audio_dir}: '
          f'{", ".join(unknown[:10])}', file=sys.stderr)
  items, failed, start = [], [], time.time()
  with concurrent.futures.ProcessPoolExecutor(
      max(1, _WORKERS.value), mp_context=multiprocessing.get_context('spawn')) as pool:
    for k, (item, path, (experts, error)) in enumerate(
        zip(ids, files, pool.map(extract_file, files, chunksize=8)), start=1):
      if error is not None:
        failed.append(f'{item}\t{error}')
        print(f'cannot read {item}: {error}', file=sys.stderr)
      else:
        items.append(Item(item, experts, captions.get(item, []), path))
      if k % 500 == 0 or k == len(files):
        rate = k / (time.time() - start)
        print(f'{k}/{len(files)} files, {rate:.0f} files/s, ETA {(len(files) - k) / rate:.0f} s')
  if not items:
    sys.exit(f'none of the {len(files)} files could be read')
  kept = [it.id for it in items]
  splits = {'all': kept}
  if captions:
    splits.update(assign_splits([i for i in kept if i in captions], given, _VAL.value,
                                _TEST.value, _SEED.value))
  write_release(out, items, splits, words)
  (out / 'failed_files.txt').write_text(''.join(f'{f}\n' for f in failed))
  print(f'wrote {len(items)} items to {out} ({len(failed)} unreadable, listed in '
        f'{out / "failed_files.txt"}); splits: '
        + ', '.join(f'{s} {len(v)}' for s, v in splits.items()))


if __name__ == '__main__':
  app.run(main)
