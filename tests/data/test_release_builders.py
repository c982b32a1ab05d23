"""TFDS builders of the released datasets, built from miniatures in the release format."""

import importlib
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxretrieval.data.releases import RELEASES, ReleaseFileError
from tests.release_miniature import LAYOUTS, make_contents, write_hickle4, write_release

DATASETS = sorted(LAYOUTS)


def builder_for(dataset: str, data_dir: pathlib.Path):
  module = importlib.import_module(f'data_builders.{dataset}.{dataset}_dataset_builder')
  return module.Builder(data_dir=str(data_dir))


def build(dataset, tmp_path, manual_dir):
  builder = builder_for(dataset, tmp_path / 'tfds')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def check_split(builder, split, contents):
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  assert sorted(e['id'].decode() for e in examples) == sorted(contents['ids'][split])
  for example in examples:
    item = example['id'].decode()
    for name, values in contents['features'].items():
      want = values[item]
      assert bool(example['available'][name]) == (want is not None), (item, name)
      if want is not None:
        np.testing.assert_array_equal(example['experts'][name], want)
      else:
        assert example['experts'][name].size == 0 or not example['experts'][name].any()
    assert [c.decode() for c in example['captions']] == [' '.join(c) for c in
                                                         contents['captions'][item]]
    lengths = example['caption_lengths']
    parts = np.split(example['caption_vectors'], np.cumsum(lengths)[:-1])
    assert len(parts) == len(contents['vectors'][item])
    for got, want in zip(parts, contents['vectors'][item]):
      np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('dataset', DATASETS)
def test_builds_from_archive_and_reads_back_every_array(dataset, tmp_path):
  contents = make_contents(dataset)
  manual = write_release(dataset, tmp_path, contents)
  builder = build(dataset, tmp_path, manual)
  assert set(builder.info.splits) == set(LAYOUTS[dataset][2])
  for split in LAYOUTS[dataset][2]:
    check_split(builder, split, contents)


def test_builds_from_unpacked_folder(tmp_path):
  contents = make_contents('queryd_segments')
  unpacked = write_release('queryd_segments', tmp_path, contents, archive=False)
  builder = build('queryd_segments', tmp_path, unpacked)
  check_split(builder, 'test', contents)


def test_tfds_command_line_build(tmp_path):
  contents = make_contents('clotho', {'train': 3, 'val': 2, 'test': 2})
  manual = write_release('clotho', tmp_path, contents)
  root = pathlib.Path(__file__).resolve().parents[2]
  tfds_cli = pathlib.Path(sys.executable).parent / 'tfds'
  subprocess.run([str(tfds_cli), 'build', str(root / 'data_builders' / 'clotho'),
                  f'--manual_dir={manual}', f'--data_dir={tmp_path / "cli"}'], check=True,
                 capture_output=True, cwd=tmp_path)
  loaded = tfds.builder_from_directory(str(tmp_path / 'cli' / 'clotho' / '1.0.0'))
  check_split(loaded, 'val', contents)


def _unpacked(dataset, tmp_path, contents=None):
  contents = contents or make_contents(dataset)
  root = write_release(dataset, tmp_path, contents, archive=False)
  return contents, root, root / 'data' / LAYOUTS[dataset][1] / 'structured-symlinks'


def _build_fails(dataset, tmp_path, manual, match, error=ReleaseFileError):
  with pytest.raises(error, match=match):
    build(dataset, tmp_path, manual)
  # Nothing that TFDS would take as a finished dataset is left behind.
  assert not list((tmp_path / 'tfds').glob(f'{dataset}/*/dataset_info.json'))
  with pytest.raises(Exception):
    tfds.load(dataset, data_dir=str(tmp_path / 'tfds'), split='train', download=False)


def test_missing_file_names_dataset_file_archive_path_and_url(tmp_path):
  _, manual, root = _unpacked('clotho', tmp_path)
  (root / 'aggregated_vggsound' / 'vggsound-raw.hickle').unlink()
  _build_fails('clotho', tmp_path, manual,
               r'clotho: missing file aggregated_vggsound/vggsound-raw.hickle .*'
               r'data/CLOTHO/structured-symlinks/aggregated_vggsound/vggsound-raw.hickle.*'
               + RELEASES['clotho'].url.replace('.', r'\.'))


def test_empty_manual_dir_explains_the_layout(tmp_path):
  (tmp_path / 'empty').mkdir()
  # TFDS itself stops on an empty manual dir, printing our instructions.
  _build_fails('audiocaps', tmp_path, tmp_path / 'empty',
               '(?s)AudioCaps-experts-audio-only.tar.gz.*filtered_val_list.txt', AssertionError)
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'README').write_text('not the data')
  _build_fails('audiocaps', tmp_path, tmp_path / 'other',
               'found neither AudioCaps-experts-audio-only.tar.gz.*filtered_val_list.txt')


def test_split_id_without_features(tmp_path):
  contents, manual, root = _unpacked('sounddescs', tmp_path)
  with open(root / 'val_list.txt', 'a') as f:
    f.write('nhu99999999\n')
  _build_fails('sounddescs', tmp_path, manual,
               r'sounddescs: item nhu99999999 of aggregated_audio/vggish-raw.pkl \(vggish\) '
               'has no entry')


def test_nan_in_non_flaky_expert(tmp_path):
  contents = make_contents('clotho')
  victim = contents['ids']['test'][1]
  contents['features']['vggsound'][victim] = contents['features']['vggsound'][victim].copy()
  contents['features']['vggsound'][victim][0, 3] = np.nan
  _, manual, _ = _unpacked('clotho', tmp_path, contents)
  _build_fails('clotho', tmp_path, manual, f'item {victim} of .*vggsound-raw.hickle.*NaN')


def test_wrong_feature_dims(tmp_path):
  contents = make_contents('audiocaps')
  victim = contents['ids']['train'][0]
  contents['features']['r2p1d'][victim] = np.ones(500, np.float32)
  _, manual, _ = _unpacked('audiocaps', tmp_path, contents)
  _build_fails('audiocaps', tmp_path, manual,
               rf'item {victim} of .*r2p1d-ig65m-avg.pickle \(r2p1d\) has shape \(500,\), '
               r'expected \[512\]')


def test_truncated_hickle(tmp_path):
  _, manual, root = _unpacked('clotho', tmp_path)
  path = root / 'aggregated_pann' / 'pann-raw.hickle'
  path.write_bytes(path.read_bytes()[:5000])
  _build_fails('clotho', tmp_path, manual, r'cannot read .*pann-raw.hickle.*truncated or corrupt')


def test_corrupt_archive(tmp_path):
  manual = write_release('clotho', tmp_path, make_contents('clotho'))
  archive = manual / 'CLOTHO-experts-audio-only.tar.gz'
  archive.write_bytes(archive.read_bytes()[:2000])
  _build_fails('clotho', tmp_path, manual, 'cannot unpack')


def test_flaky_expert_missing_is_recorded_not_an_error(tmp_path):
  contents = make_contents('audiocaps')
  manual = write_release('audiocaps', tmp_path, contents)
  builder = build('audiocaps', tmp_path, manual)
  flags = [bool(e['available']['vggish']) for e in
           tfds.as_numpy(builder.as_dataset(split='train'))]
  assert not all(flags) and any(flags)


def test_hickle4_reader_handles_both_attribute_styles(tmp_path):
  """hickle 4 under h5py 2 wrote byte-string attributes; h5py 3 writes str ones."""
  from jaxretrieval.data.release_files import load_hickle
  items = {"it's_0": np.arange(6, dtype=np.float32).reshape(3, 2), 'gone_1': float('nan')}
  write_hickle4(tmp_path / 'a.hickle', items)
  import h5py
  shutil.copy(tmp_path / 'a.hickle', tmp_path / 'b.hickle')
  with h5py.File(tmp_path / 'b.hickle', 'r+') as f:
    for group in f['data'].values():
      group.attrs['base_type'] = 'dict_item'
      group['data'].attrs['base_type'] = group['data'].attrs['base_type'].decode()
  for name in ('a.hickle', 'b.hickle'):
    loaded = load_hickle(tmp_path / name)
    assert sorted(loaded) == sorted(items)
    np.testing.assert_array_equal(loaded["it's_0"], items["it's_0"])
    assert np.isnan(loaded['gone_1'])
