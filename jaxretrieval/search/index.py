r"""Builds, grows or shrinks a search index of a sound collection.

  python -m jaxretrieval.search.index --workdir WORKDIR [--data NAME_OR_FOLDER] [--split test] \
      --out INDEX [--word_vectors PATH] [--audio_root FOLDER]
  python -m jaxretrieval.search.index --add NAME_OR_FOLDER --to INDEX [--audio_root FOLDER]
  python -m jaxretrieval.search.index --remove ID [--remove ID ...] [--remove @IDS.txt] --to INDEX

`--data` is a TFDS dataset name (default: the workdir's) or a folder written by
`python -m jaxretrieval.features`; every split is indexed unless `--split` names one.
Audio files must lie inside an `--audio_root` (default: the features folder, or the TFDS
downloads folder); the search server serves nothing outside these folders. For the
released datasets `--word_vectors` is required (word2vec's GoogleNews table, which the
models were trained with); SynthCaps and features folders made with --captions carry their
own table. The items are embedded and written `--shard_items` at a time, one shard each,
so the build's memory does not grow with the collection; `--dtype float16` halves the
embeddings on disk and what a query reads.

Each item keeps its captions (a TFDS dataset's, or a features folder's made with
--captions) and, when its audio file is readable, a spectrogram thumbnail for the search
page (`thumbnails.py`). Building and `--add` log their progress (items/s, ETA).

`--add` embeds only the new items, with the index's own model (the workdir it was built
from gives the token limits; `--workdir` names another copy), into a new shard; `--remove`
rewrites only the shards that lose items (`@FILE` reads one id per line). Both swap the
index's manifest atomically at the end, so an interrupted run leaves the index as it was.
"""

import pathlib
import sys

from absl import app, flags, logging

from jaxretrieval.search.build import SHARD_ITEMS, add_to_index, build_index, remove_from_index
from jaxretrieval.search.store import IndexFileError


def removed_ids(values: list[str]) -> list[str]:
  """The ids of --remove values: an id, or @FILE with one id per line."""
  ids = []
  for value in values:
    if value.startswith('@'):
      ids += [line for line in pathlib.Path(value[1:]).read_text().splitlines() if line]
    else:
      ids.append(value)
  return ids


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  f = flags.FLAGS
  if f.add or f.remove:
    if not f.to or (f.add and f.remove):
      sys.exit('--add FOLDER and --remove IDS each need --to INDEX (one of them at a time)')
    try:
      if f.add:
        n = add_to_index(f.to, f.add, f.workdir, f.split, f.data_dir, f.audio_root)
        print(f'added {n} items to {f.to}')
      else:
        n = remove_from_index(f.to, removed_ids(f.remove))
        print(f'{n} items left in {f.to}')
    except (FileNotFoundError, IndexFileError, ValueError) as e:
      sys.exit(f'cannot change {f.to}: {e}')
    return
  if not f.workdir or not f.out:
    sys.exit('pass --workdir and --out to build an index (or --add/--remove with --to)')
  try:
    n = build_index(f.workdir, f.out, f.data, f.split, f.data_dir, f.word_vectors, f.dtype,
                    f.audio_root, f.shard_items)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'cannot build {f.out}: {e}')
  print(f'indexed {n} items into {f.out}; search with: python -m jaxretrieval.search.query '
        f'--index {f.out} "a dog barks"')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'trained or imported workdir (with --add: default the '
                      'one the index was built from)')
  flags.DEFINE_string('out', None, 'index directory to write')
  flags.DEFINE_string('data', None, 'TFDS name or features folder (default: the workdir dataset)')
  flags.DEFINE_string('split', None, 'index only this split')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: the workdir config)')
  flags.DEFINE_string('word_vectors', None, 'query word vectors (word2vec .bin/.txt, a '
                      'word_vectors.npz table or an older .pkl); required for the released '
                      'datasets')
  flags.DEFINE_multi_string('audio_root', None, 'folder holding the collection\'s audio '
                            '(repeatable; default: the features folder or TFDS downloads)')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'float16'], 'storage of the embeddings')
  flags.DEFINE_integer('shard_items', SHARD_ITEMS, 'items embedded and written at a time (one '
                       'shard each): the build holds one shard in memory', lower_bound=1)
  flags.DEFINE_string('add', None, 'TFDS name or features folder whose items to add (--to)')
  flags.DEFINE_multi_string('remove', None, 'id of an item to remove (repeatable; @FILE: one '
                            'id per line) (--to)')
  flags.DEFINE_string('to', None, 'index directory to change with --add or --remove')
  app.run(main)
