r"""Builds a search index of a sound collection with a trained (or imported) model.

  python -m jaxretrieval.index --workdir WORKDIR [--data NAME_OR_FOLDER] [--split test] \
      --out INDEX [--word_vectors PATH] [--audio_root FOLDER]

`--data` is a TFDS dataset name (default: the workdir's) or a folder written by
`python -m jaxretrieval.features`; every split is indexed unless `--split` names one.
Audio files must lie inside an `--audio_root` (default: the features folder, or the TFDS
downloads folder); the search server serves nothing outside these folders.
"""

from absl import app
from absl import flags
from absl import logging

from jaxretrieval.search.build import build_index


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  f = flags.FLAGS
  store = build_index(f.workdir, f.out, f.data, f.split, f.data_dir, f.word_vectors, f.dtype,
                      f.audio_root)
  print(f'indexed {len(store)} items into {f.out}; search with: python -m jaxretrieval.search '
        f'--index {f.out} "a dog barks"')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'trained or imported workdir', required=True)
  flags.DEFINE_string('out', None, 'index directory to write', required=True)
  flags.DEFINE_string('data', None, 'TFDS name or features folder (default: the workdir dataset)')
  flags.DEFINE_string('split', None, 'index only this split')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: the workdir config)')
  flags.DEFINE_string('word_vectors', None, 'query word vectors (word2vec .bin/.txt, a word_vectors.npz table or an older .pkl)')
  flags.DEFINE_multi_string('audio_root', None, 'folder holding the collection\'s audio '
                            '(repeatable; default: the features folder or TFDS downloads)')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'float16'], 'storage of the embeddings')
  app.run(main)
