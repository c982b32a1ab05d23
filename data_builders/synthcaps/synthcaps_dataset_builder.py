"""SynthCaps: procedurally generated audio captioning data, built with no download.

Clips of 1-3 synthetic sound events (16 kinds, with loudness, length, pitch and rate),
in sequence or overlapping, over background noise; 5 captions each. The builder renders
the clips, computes the project's experts from the waveforms and writes everything in the
release layout, which the shared release reader then ingests - the real-data path. The
wav files stay in `<data_dir>/downloads/synthcaps-<config>/audio/`.
"""

import dataclasses
import pathlib

import tensorflow_datasets as tfds

from data_builders import release_builder
from data_builders.synthcaps.generate import SPLITS, generate
from jaxretrieval.data.releases import RELEASES, ReleaseReader


@dataclasses.dataclass
class SynthCapsConfig(tfds.core.BuilderConfig):
  train: int = 0
  val: int = 0
  test: int = 0
  seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SynthCapsConfig(name='small', description='Default: the README demo.', train=2000,
                      val=250, test=500),
      SynthCapsConfig(name='tiny', description='For tests.', train=48, val=16, test=16),
      SynthCapsConfig(name='large', description='For benchmarks.', train=20000, val=1000,
                      test=2000),
  ]
  DEFAULT_CONFIG_NAME = 'small'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__, features=release_builder.release_features(RELEASES['synthcaps']))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    root = pathlib.Path(dl_manager.download_dir) / f'synthcaps-{c.name}-{self.version}'
    generate(root, {'train': c.train, 'val': c.val, 'test': c.test}, c.seed)
    reader = ReleaseReader('synthcaps', root)
    return {split: self._generate_examples(reader, split) for split in SPLITS}

  def _generate_examples(self, reader: ReleaseReader, split: str):
    for key, example in reader.examples(split):
      yield key, release_builder.tfds_example(example)
