r"""Computes audio experts for a folder of audio files and writes the release layout.

  python -m jaxretrieval.features --audio_dir DIR --out OUT \
      [--experts vggish,vggsound --vggish_checkpoint vggish_model.ckpt \
       --vggish_pca vggish_pca_params.npz --vggsound_checkpoint H.pth.tar] \
      [--captions captions.csv --word_vectors VECTORS] \
      [--beam [--runner DirectRunner] [--beam_pipeline_options "..."] [--shards N]]

Experts: `logmel`, `spectral` (this project's, the default) and the paper's `vggish` and
`vggsound` (published weights, see `vggish.py`, `vggsound.py`), under the names the released
models' configs use. Every readable file is in `all_list.txt`; with captions (CSV columns
`file,caption[,split]`, one row per caption, `file` relative to DIR) the captioned files also
form `train/val/test` lists, from the `split` column or a seeded split. Unreadable files are
reported by name (also in OUT/failed_files.txt) and the rest are processed. OUT is written
in a temporary folder beside it and renamed into place when complete. By default this
process decodes with `--workers` processes and runs the networks itself; `--beam` runs the
same steps as an Apache Beam pipeline (`pipeline.py`) on the DirectRunner or a cluster.
"""

import collections
import concurrent.futures
import csv
import io
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

from absl import app, flags
import numpy as np

from jaxretrieval.features import handcrafted, prepare
from jaxretrieval.features.audio_io import AUDIO_SUFFIXES
from jaxretrieval.features.release_writer import (
  Item,
  item_id,
  replace_folder,
  write_items,
  write_tables,
)
from jaxretrieval.text import WordVectors

ALL_EXPERTS = {**handcrafted.DIMS, **prepare.PRETRAINED}

_AUDIO_DIR = flags.DEFINE_string('audio_dir', None, 'folder of wav/flac/ogg files', required=True)
_OUT = flags.DEFINE_string('out', None, 'output folder (release layout)', required=True)
_EXPERTS = flags.DEFINE_list('experts', ['logmel', 'spectral'],
                             f'experts to compute, from {sorted(ALL_EXPERTS)}')
_VGGISH = flags.DEFINE_string('vggish_checkpoint', None,
                              'vggish_model.ckpt (TensorFlow) or torchvggish .pth')
_VGGISH_PCA = flags.DEFINE_string('vggish_pca', None,
                                  'vggish_pca_params.npz (or torchvggish\'s PCA .pth)')
_VGGISH_OUTPUT = flags.DEFINE_enum('vggish_output', 'postprocessed', ['postprocessed', 'embedding'],
                                   'PCA + 8-bit quantised (official release format) or raw')
_VGGISH_FLAVOUR = flags.DEFINE_enum('vggish_flavour', 'tensorflow', ['tensorflow', 'torchvggish'],
                                    'official TF behaviour, or torchvggish (ReLU, rounding)')
_VGGSOUND = flags.DEFINE_string('vggsound_checkpoint', None, 'VGGSound model H (H.pth.tar)')
_VGGSOUND_POOL = flags.DEFINE_enum('vggsound_pool', 'mean', ['mean', 'max'],
                                   'pooling of the last conv map over frequency')
_VGGSOUND_MAX = flags.DEFINE_float('vggsound_max_seconds', 0.0,
                                   'cut clips to this length for VGGSound (0: whole clip)')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'network compute dtype')
_CAPTIONS = flags.DEFINE_string('captions', None, 'CSV with columns file,caption[,split]')
_WORD_VECTORS = flags.DEFINE_string('word_vectors', None, 'word vectors for the captions: '
                                    'word2vec .bin/.txt or a word_vectors.npz (or older .pkl) table')
_VAL = flags.DEFINE_float('val_fraction', 0.1, 'without a split column: share of val items')
_TEST = flags.DEFINE_float('test_fraction', 0.1, 'without a split column: share of test items')
_SEED = flags.DEFINE_integer('seed', 0, 'seed of the split')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1, 'decoding processes')
_CHUNK = flags.DEFINE_integer('chunk', 64, 'files decoded between two network passes')
_BEAM = flags.DEFINE_bool('beam', False, 'run as an Apache Beam pipeline (see pipeline.py), '
                          'writing the per-item tables in --shards shards')
_RUNNER = flags.DEFINE_string('runner', 'DirectRunner', 'Beam runner: DirectRunner (this '
                              'machine, --workers processes), FlinkRunner, SparkRunner, '
                              'DataflowRunner, ...')
_BEAM_OPTIONS = flags.DEFINE_string('beam_pipeline_options', '',
                                    'more Beam options, as command-line flags in one string')
_SHARDS = flags.DEFINE_integer('shards', 0, 'with --beam: shards per table (0: one per '
                               'pipeline.FILES_PER_SHARD files)', lower_bound=0)

SPLITS = ('train', 'val', 'test')


def one_line(text: str) -> str:
  """`text` with control characters and undecodable bytes escaped: safe in a line-based log."""
  return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _decode_csv(path: pathlib.Path) -> str:
  raw = path.read_bytes()
  try:
    return raw.decode('utf-8-sig')  # spreadsheets prepend a byte-order mark
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise ValueError(f'{path}:{line}: byte 0x{raw[e.start]:02x} is not UTF-8; save the CSV as '
                     'UTF-8') from None


def read_captions(path: pathlib.Path) -> tuple[dict[str, list[str]], dict[str, str]]:
  """item id -> captions, and item id -> split where the CSV gives one."""
  captions, splits = collections.defaultdict(list), {}
  reader = csv.DictReader(io.StringIO(_decode_csv(path), newline=''))
  missing = {'file', 'caption'} - set(reader.fieldnames or ())
  if missing:
    raise ValueError(f'{path}: missing column(s) {sorted(missing)} in the header '
                     f'{reader.fieldnames}; expected file,caption[,split]')
  for row in reader:
    line = reader.line_num
    if row['file'] is None or row['caption'] is None or None in row:
      raise ValueError(f'{path}:{line}: expected the header\'s {len(reader.fieldnames)} fields')
    item = item_id(row['file'])
    captions[item].append(row['caption'])
    split = (row.get('split') or '').strip()
    if split:
      if split not in SPLITS:
        raise ValueError(f'{path}:{line}: split {split!r} not in {SPLITS}')
      splits[item] = split
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


def list_audio(audio_dir: pathlib.Path) -> list[pathlib.Path]:
  """Audio files under `audio_dir`, sorted; folders with an audio suffix are reported."""
  files = []
  for p in sorted(audio_dir.rglob('*')):
    if p.suffix.lower() in AUDIO_SUFFIXES:
      if p.is_file():
        files.append(p)
      else:
        print(f'skipping {one_line(str(p))}: not a file', file=sys.stderr)
  return files


def extract_all(files, ids, experts, options, runners, captions, workers, chunk):
  """Items for the readable files and (id, reason) for the others, with progress. The
  workers decode and compute the networks' inputs (`prepare.prepare_file`, no JAX in them);
  this process runs the networks."""
  from jaxretrieval.features import pretrained  # pylint: disable=g-import-not-at-top
  items, failed, start, clips = [], [], time.time(), 0
  with concurrent.futures.ProcessPoolExecutor(
      max(1, workers), mp_context=multiprocessing.get_context('spawn')) as pool:
    for first in range(0, len(files), chunk):
      paths, names = files[first:first + chunk], ids[first:first + chunk]
      results = list(pool.map(prepare.prepare_file, paths, [experts] * len(paths),
                              [options] * len(paths)))
      ok = [k for k, (_, error) in enumerate(results) if error is None]
      for k, (_, error) in enumerate(results):
        if error is not None:
          reason = one_line(error.replace(str(paths[k]), names[k]))
          failed.append((names[k], reason))
          print(f'cannot read {reason}', file=sys.stderr)
      computed = pretrained.features([results[k][0] for k in ok], runners)
      for k, clip in zip(ok, computed):
        items.append(Item(names[k], clip, captions.get(names[k], []), paths[k]))
      clips += len(ok)
      done, elapsed = first + len(paths), time.time() - start
      print(f'{done}/{len(files)} files, {clips / elapsed:.1f} clips/s, '
            f'ETA {(len(files) - done) * elapsed / done:.0f} s', flush=True)
  return items, failed


def check_out(out: pathlib.Path, audio_dir: pathlib.Path) -> None:
  """Refuses an OUT that would replace the audio or an unrelated folder."""
  if audio_dir.resolve().is_relative_to(out.resolve()):
    sys.exit(f'--out={out} holds the audio folder {audio_dir}; choose another output folder')
  if out.exists() and any(out.iterdir()) and not (out / 'audio_files.json').is_file():
    sys.exit(f'--out={out} is a non-empty folder not written by this tool; choose a new '
             'or empty one')


def main(argv):
  del argv
  audio_dir, out = pathlib.Path(_AUDIO_DIR.value), pathlib.Path(_OUT.value)
  experts = tuple(dict.fromkeys(_EXPERTS.value))
  unknown = [e for e in experts if e not in ALL_EXPERTS]
  if unknown or not experts:
    sys.exit(f'--experts: unknown {unknown}; expected some of {sorted(ALL_EXPERTS)}')
  check_out(out, audio_dir)
  files = list_audio(audio_dir)
  if not files:
    sys.exit(f'no {"/".join(AUDIO_SUFFIXES)} files under {audio_dir}')
  try:
    captions, given = ({}, {}) if _CAPTIONS.value is None else read_captions(
        pathlib.Path(_CAPTIONS.value))
  except (ValueError, OSError) as e:
    sys.exit(one_line(str(e)))
  words = None
  if captions:
    if _WORD_VECTORS.value is None:
      sys.exit('--captions needs --word_vectors (word2vec .bin/.txt, or word_vectors.npz)')
    words = WordVectors.load(_WORD_VECTORS.value)
  options = prepare.Options(
      vggish_output=_VGGISH_OUTPUT.value, vggish_flavour=_VGGISH_FLAVOUR.value,
      vggsound_pool=_VGGSOUND_POOL.value, vggsound_max_seconds=_VGGSOUND_MAX.value or None,
      dtype=_DTYPE.value)
  # Imported here: JAX (seconds) is not needed to check the arguments, or to answer --help.
  from jaxretrieval.features import pretrained  # pylint: disable=g-import-not-at-top
  try:
    runners = pretrained.load_runners(experts, options, _VGGISH.value, _VGGISH_PCA.value,
                                      _VGGSOUND.value)
  except ValueError as e:
    sys.exit(one_line(str(e)))
  ids = [item_id(str(p.relative_to(audio_dir).as_posix())) for p in files]
  unmatched = sorted(set(captions) - set(ids))
  if unmatched:
    print(f'captions name {len(unmatched)} file(s) not found under {audio_dir}: '
          f'{", ".join(unmatched[:10])}', file=sys.stderr)
  out.parent.mkdir(parents=True, exist_ok=True)
  built = out.with_name(f'.{out.name}.tmp-{os.getpid()}')
  dims = {e: ALL_EXPERTS[e] for e in experts}
  try:
    if _BEAM.value:
      # Imported here: Beam's import is slow and the default path does not need it.
      from jaxretrieval.features import pipeline  # pylint: disable=g-import-not-at-top
      weights = {'vggish_checkpoint': _VGGISH.value, 'vggish_pca': _VGGISH_PCA.value,
                 'vggsound_checkpoint': _VGGSOUND.value}
      records, failed = pipeline.extract(
          ids, audio_dir, built, experts, options, weights, runners, captions,
          _WORD_VECTORS.value, _SHARDS.value, _RUNNER.value, _BEAM_OPTIONS.value, _WORKERS.value,
          max(1, _CHUNK.value))
      for item, reason in failed:
        print(f'cannot read {one_line(reason)}', file=sys.stderr)
    else:
      items, failed = extract_all(files, ids, experts, options, runners, captions,
                                  _WORKERS.value, max(1, _CHUNK.value))
      write_items(built, items, dims, words, any(it.captions for it in items))
      records = [(it.id, it.audio_file, tuple(it.experts)) for it in items]
    if not records:
      sys.exit(f'none of the {len(files)} files could be read')
    kept = [item for item, _, _ in records]
    splits = {'all': kept}
    if captions:
      splits.update(assign_splits([i for i in kept if i in captions], given, _VAL.value,
                                  _TEST.value, _SEED.value))
    missing = {e: sum(e not in has for _, _, has in records) for e in experts}
    write_tables(built, splits, dims, {e for e, n in missing.items() if n},
                 {item: audio for item, audio, _ in records}, words)
    (built / 'failed_files.txt').write_text(
        ''.join(f'{i}\t{one_line(r)}\n' for i, r in failed), encoding='utf-8')
    replace_folder(built, out)
  finally:
    if built.exists():
      shutil.rmtree(built)
  print(f'wrote {len(records)} items to {out} ({len(failed)} unreadable, listed in '
        f'{out / "failed_files.txt"}); splits: '
        + ', '.join(f'{s} {len(v)}' for s, v in splits.items())
        + ''.join(f'; {n} too short for {e}' for e, n in missing.items() if n))


if __name__ == '__main__':
  app.run(main)
