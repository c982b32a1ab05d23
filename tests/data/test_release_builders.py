"""TFDS builders of the released datasets, built from miniatures in the release format."""

import os
import pathlib
import pickle
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxretrieval.data import registry
from jaxretrieval.data.releases import ReleaseFileError
from jaxretrieval.data.tfds_builders import BUILDERS
from tests import in_process
from tests.release_miniature import LAYOUTS, make_contents, write_hickle4, write_release

DATASETS = sorted(LAYOUTS)


def build(dataset, tmp_path, manual_dir):
  builder = BUILDERS[dataset](data_dir=str(tmp_path / 'tfds'))
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


@pytest.mark.slow
def test_tfds_command_line_build(tmp_path):
  contents = make_contents('clotho', {'train': 3, 'val': 2, 'test': 2})
  manual = write_release('clotho', tmp_path, contents)
  root = pathlib.Path(__file__).resolve().parents[2]
  # `tfds build` (its console script runs this module's launch_cli), in this process.
  done = in_process.run_module('tensorflow_datasets.scripts.cli.main', [
      'build', str(root / 'data_builders' / 'clotho'), f'--manual_dir={manual}',
      f'--data_dir={tmp_path / "cli"}'])
  assert done.returncode == 0, done.stderr[-3000:]
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
               + registry.DATASETS['clotho'].release.url.replace('.', r'\.'))


def test_empty_manual_dir_explains_the_layout(tmp_path):
  (tmp_path / 'empty').mkdir()
  # TFDS itself stops on an empty manual dir, printing our instructions.
  _build_fails('audiocaps', tmp_path, tmp_path / 'empty',
               '(?s)AudioCaps-experts-audio-only.tar.gz.*filtered_val_list.txt', AssertionError)
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'README').write_text('not the data')
  _build_fails('audiocaps', tmp_path, tmp_path / 'other',
               'found neither AudioCaps-experts-audio-only.tar.gz.*filtered_val_list.txt')


def test_split_id_without_caption_is_refused_before_writing(tmp_path):
  _, manual, root = _unpacked('sounddescs', tmp_path)
  with open(root / 'val_list.txt', 'a') as f:
    f.write('nhu99999999\n')
  _build_fails('sounddescs', tmp_path, manual,
               r'sounddescs: 1 id\(s\) of val_list.txt have no entry in '
               r'structured-symlinks/raw-captions.pkl: nhu99999999\.')


def test_id_listed_twice_is_named(tmp_path):
  contents, manual, root = _unpacked('clotho', tmp_path)
  twice = contents['ids']['test'][2]
  with open(root / 'test_list.txt', 'a') as f:
    f.write(f'{twice}\n')
  _build_fails('clotho', tmp_path, manual,
               rf'clotho: test_list.txt lists 1 id\(s\) more than once: {twice}\.')


def test_id_in_train_and_test_is_refused_naming_it(tmp_path):
  contents, manual, root = _unpacked('audiocaps', tmp_path)
  leaked = contents['ids']['train'][1]
  with open(root / 'final_filtered_test_list.txt', 'a') as f:
    f.write(f'{leaked}\n')
  _build_fails('audiocaps', tmp_path, manual,
               rf'audiocaps: 1 id\(s\) are in both train \(train_list.txt\) and test '
               rf'\(final_filtered_test_list.txt\): {leaked}\.')


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


def _missing_counts(contents):
  """split -> expert -> how many of the split's items `contents` leaves without an entry."""
  return {split: {expert: sum(values[i] is None for i in ids)
                  for expert, values in contents['features'].items()}
          for split, ids in contents['ids'].items()}


def test_gaps_are_read_on_as_the_reference_does(tmp_path, caplog):
  """Entries missing from non-flaky experts build as unavailable and are counted; training
  refuses them only for an expert its config uses (REFERENCE §1.6)."""
  from configs import ce_audiocaps
  from jaxretrieval.data import splits
  from jaxretrieval.models.spec import model_spec
  contents = make_contents('audiocaps')
  ids, features = contents['ids'], contents['features']
  unused_gap, train_gap, test_gap = ids['train'][0], ids['train'][2], ids['test'][1]
  features['pann'][unused_gap] = None  # an expert the paper configs do not use (NaN in hickle)
  features['vggsound'][train_gap] = None  # a used, non-flaky expert: training refuses it
  features['vggsound'][test_gap] = None  # ... evaluation scores it without vggsound
  features['inst'][ids['val'][1]] = None  # an all-NaN ExpertStore row
  features['r2p1d'][ids['test'][0]] = None  # a key absent from a pickled dict
  manual = write_release('audiocaps', tmp_path, contents)
  with caplog.at_level('WARNING'):
    builder = build('audiocaps', tmp_path, manual)
  for split in LAYOUTS['audiocaps'][2]:
    check_split(builder, split, contents)
  counts = _missing_counts(contents)
  assert counts['test']['vggsound'] == 1 and counts['train']['pann'] == 1
  assert builder.info.metadata['missing_entries'] == counts
  reloaded = tfds.builder_from_directory(str(tmp_path / 'tfds' / 'audiocaps' / '1.0.0'))
  assert reloaded.info.metadata['missing_entries'] == counts
  log = caplog.text
  assert ('audiocaps test: 1 of 4 item(s) have no vggsound entry in '
          'aggregated_vggsound/vggsound-raw.hickle (not flaky') in log and test_gap in log
  assert 'audiocaps train: 1 of 4 item(s) have no pann entry' in log

  config = ce_audiocaps.get_config()
  config.data_dir = str(tmp_path / 'tfds')
  spec, table = model_spec(config), splits.CaptionVocab()
  data = splits.tfds_builder(config)
  train = splits.load_split(data, 'train', config, spec, table)
  with pytest.raises(ValueError, match=f'lack the expert vggsound.*: {train_gap}\\. ') as error:
    splits.check_required_experts(train, spec.expert_names, config.flaky)
  assert unused_gap not in str(error.value)
  test = splits.load_split(data, 'test', config, spec, table)
  vggsound = spec.expert_names.index('vggsound')
  assert [test.availability[i, vggsound] for i in range(len(test))] == [
      float(i != test_gap) for i in test.ids]
  config.experts = ('vggish', 'syncnet')  # the pann gap does not concern this config
  spec = model_spec(config)
  splits.check_required_experts(
      splits.load_split(data, 'train', config, spec, table), spec.expert_names,
      config.flaky)


def test_zero_frames_empty_captions_and_bytes_in_protocol2_pickles(tmp_path):
  """Protocol-2 pickles store zero-size arrays with `bytes`; zero frames count as missing."""
  contents = make_contents('sounddescs')
  victim = contents['ids']['val'][0]
  contents['features']['vggish'][victim] = np.zeros((0, 128), np.float32)
  contents['captions'][victim].append([])
  contents['vectors'][victim].append(np.zeros((0, 300), np.float32))
  manual = write_release('sounddescs', tmp_path, contents)
  builder = build('sounddescs', tmp_path, manual)
  contents['features']['vggish'][victim] = None  # what the dataset must say
  check_split(builder, 'val', contents)
  assert builder.info.metadata['missing_entries']['val']['vggish'] == 1


def test_caption_tokens_stored_as_bytes_are_decoded_or_named(tmp_path):
  from jaxretrieval.data.releases import ReleaseReader
  contents, _, root = _unpacked('clotho', tmp_path)
  first, second = contents['ids']['train'][:2]
  captions = dict(contents['captions'])
  captions[first] = [[b'caf\xc3\xa9', b'bell']] + captions[first][1:]
  (root / 'structured-symlinks' / 'raw-captions.pkl').write_bytes(
      pickle.dumps(captions, protocol=2))
  examples = ReleaseReader('clotho', root).examples('train')
  assert next(examples)[1]['captions'][0] == 'café bell'
  captions[second] = [[b'\xff\xfeloud']] + captions[second][1:]
  (root / 'structured-symlinks' / 'raw-captions.pkl').write_bytes(
      pickle.dumps(captions, protocol=2))
  with pytest.raises(ReleaseFileError,
                     match=f'clotho: item {second} of structured-symlinks/raw-captions.pkl has '
                           'a caption token that is not UTF-8'):
    list(ReleaseReader('clotho', root).examples('train'))


def test_fixed_archive_replaces_a_stale_unpacked_copy(tmp_path):
  broken = make_contents('clotho')
  victim = broken['ids']['test'][1]
  broken['features']['vggsound'][victim][0, 3] = np.nan
  manual = write_release('clotho', tmp_path / 'first', broken)
  _build_fails('clotho', tmp_path, manual, f'item {victim} of .*NaN')
  contents = make_contents('clotho')  # the same seed: the fixed download
  fixed = write_release('clotho', tmp_path / 'second', contents)
  shutil.copy(fixed / 'CLOTHO-experts-audio-only.tar.gz', manual)
  builder = build('clotho', tmp_path, manual)
  check_split(builder, 'test', contents)


def test_unpacked_copy_is_reused_only_for_the_same_archive(tmp_path):
  from jaxretrieval.data.releases import unpack_archive
  manual = write_release('queryd_segments', tmp_path, make_contents('queryd_segments'))
  archive = manual / 'QuerYDSegments-experts-audio-only.tar.gz'
  target = tmp_path / 'scratch'
  unpack_archive(archive, target)
  marker = target / 'data' / 'marker'
  marker.write_text('unpacked earlier')
  unpack_archive(archive, target)
  assert marker.exists()  # the same archive: nothing unpacked again
  stat = archive.stat()
  os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  unpack_archive(archive, target)
  assert not marker.exists()  # another archive: a fresh copy
  assert (target / 'data' / 'QuerYDSegments' / 'structured-symlinks' / 'train_list.txt').exists()
  marker.write_text('left by an interrupted unpacking')
  (target / '.unpacked').unlink()
  unpack_archive(archive, target)
  assert not marker.exists()


def test_unpacking_logs_progress(tmp_path, caplog):
  from jaxretrieval.data.releases import extract_archive
  manual = write_release('queryd_segments', tmp_path, make_contents('queryd_segments'))
  with caplog.at_level('INFO'):
    extract_archive(manual / 'QuerYDSegments-experts-audio-only.tar.gz', tmp_path / 'out',
                    log_every_s=0.0)
  assert re.search(r'Unpacking QuerYDSegments-experts-audio-only\.tar\.gz: \d+% '
                   r'\([\d.]+ MB/s, ETA \d+ s\)', caplog.text)
  assert (tmp_path / 'out' / 'data' / 'QuerYDSegments' / 'structured-symlinks' /
          'test_list.txt').is_file()
