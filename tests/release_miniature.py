"""Writes miniature release archives in the exact format of the real ones (REFERENCE §1).

The layout table below is restated from REFERENCE §1.4-1.5 on purpose, independently of
the library's registry (`jaxretrieval.data.registry`), so a wrong path or width in either
shows up as a failing test. Its last column is test design, not a registry fact: the
experts whose files the miniature writes with gaps (every third item missing). Hickle files are
written as hickle 4.0.4 under h5py 2.10 wrote them (fixed-length byte-string attributes);
pickles with protocol 2, visual experts partly as zsvision ExpertStore objects.
"""

import pathlib
import pickle
import sys
import tarfile
import types

import h5py
import numpy as np

# name -> (archive name, folder, {split: list}, captions, w2v, {expert: (file, dim, avg?, gaps?)})
LAYOUTS = {
    'audiocaps': ('AudioCaps', 'AudioCaps',
                  {'train': 'train_list.txt', 'val': 'filtered_val_list.txt',
                   'test': 'final_filtered_test_list.txt'},
                  'structured-symlinks/raw-captions.pkl', 'text_embeddings/w2v.pkl', {
                      'vggish': ('aggregated_audio/vggish-raw.hickle', 128, False, True),
                      'vggsound': ('aggregated_vggsound/vggsound-raw.hickle', 512, False, False),
                      'pann': ('aggregated_pann/pann-raw.hickle', 2048, False, False),
                      'syncnet': ('aggregated_syncnet/syncnet-raw.hickle', 1024, False, False),
                      'inst': ('aggregated_imagenet_25fps_256px_stride1_offset0/'
                               'resnext101_32x48d-avg.pickle', 2048, True, False),
                      'r2p1d': ('aggregated_r2p1d_30fps_256px_stride32_offset0_inner_stride1/'
                                'r2p1d-ig65m-avg.pickle', 512, True, False),
                      'scene': ('aggregated_scene_25fps_256px_stride1_offset0/'
                                'densenet161-avg.pickle', 2208, True, False)}),
    'clotho': ('CLOTHO', 'CLOTHO',
               {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
               'structured-symlinks/raw-captions.pkl', 'text_embeddings/w2v.pkl', {
                   'vggish': ('aggregated_audio/vggish-raw.hickle', 128, False, False),
                   'pann': ('aggregated_pann/pann-raw.hickle', 2048, False, False),
                   'syncnet': ('aggregated_syncnet/syncnet-raw.hickle', 1024, False, False),
                   'vggsound': ('aggregated_vggsound/vggsound-raw.hickle', 512, False, False)}),
    'activitynet_captions': ('activity-net', 'activity-net',
                             {'train': 'train_list.txt', 'val_1': 'val_1_list.txt'},
                             'raw-captions-train-val_1.pkl', 'aggregated_text_feats/w2v.pkl', {
                                 'vggish': ('aggregated_audio/vggish-audio-raw.pickle', 128,
                                            False, True),
                                 'face': ('aggregated_facefeats_25fps_256px_stride1/face-avg.pickle',
                                          512, True, True),
                                 'ocr': ('aggregated_ocr_feats/ocr-w2v.pkl', 300, False, True)}),
    'queryd_segments': ('QuerYDSegments', 'QuerYDSegments',
                        {'train': 'train_list.txt', 'val': 'val_list.txt',
                         'test': 'test_list.txt'},
                        'structured-symlinks/split_raw_captions_filtered.pkl',
                        'text_embeddings/w2v.pkl', {
                            'vggish': ('aggregated_audio/vggish-raw.hickle', 128, False, True)}),
    'queryd': ('QuerYD', 'QuerYD',
               {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
               'raw_captions_combined_filtered.pkl', 'text_embeddings/w2v.pkl', {
                   'vggish': ('aggregated_audio/vggish-raw.hickle', 128, False, True),
                   'inst': ('aggregated_imagenet_25fps_256px_stride1_offset0/'
                            'resnext101_32x48d-avg.pickle', 2048, True, False),
                   'r2p1d': ('aggregated_r2p1d_30fps_256px_stride32_offset0_inner_stride1/'
                             'r2p1d-ig65m-avg.pickle', 512, True, False),
                   'scene': ('aggregated_scene_25fps_256px_stride1_offset0/'
                             'densenet161-avg.pickle', 2208, True, False)}),
    'sounddescs': ('SoundDescs', 'SoundDescs',
                   {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
                   'structured-symlinks/raw-captions.pkl', 'text_embeddings/w2v.pkl', {
                       'vggish': ('aggregated_audio/vggish-raw.pkl', 128, False, False),
                       'vggsound': ('aggregated_vggsound/vggsound-raw.pkl', 512, False, False)}),
}
_DILL_STR = (b'\x80\x04\x95\'\x00\x00\x00\x00\x00\x00\x00\x8c\ndill._dill\x94\x8c\n_load_type'
             b'\x94\x93\x94\x8c\x03str\x94\x85\x94R\x94.')


def write_hickle4(path: pathlib.Path, items: dict) -> None:
  """A dict[str, ndarray | float] file in hickle 4.0.4's layout, attributes as h5py 2 wrote them."""
  fixed = np.bytes_
  with h5py.File(path, 'w') as f:
    f.attrs['HICKLE_VERSION'] = '4.0.4'
    f.attrs['HICKLE_PYTHON_VERSION'] = '3.7.6'
    data = f.create_group('data')
    data.attrs['base_type'] = fixed(b'dict')
    data.attrs['type'] = fixed(pickle.dumps(dict, protocol=2))
    for idx, (key, value) in enumerate(items.items()):
      group = data.create_group(repr(key))
      group.attrs['base_type'] = fixed(b'dict_item')
      group.attrs['key_base_type'] = fixed(b'str')
      group.attrs['key_type'] = fixed(_DILL_STR)
      group.attrs['key_idx'] = idx
      if isinstance(value, float):
        dset = group.create_dataset('data', data=np.float64(value))
        dset.attrs['base_type'] = fixed(b'float')
        dset.attrs['type'] = fixed(pickle.dumps(float, protocol=2))
      else:
        dset = group.create_dataset('data', data=value)
        dset.attrs['base_type'] = fixed(b'ndarray')
        dset.attrs['type'] = fixed(pickle.dumps(np.ndarray, protocol=2))
        dset.attrs['np_dtype'] = fixed(str(value.dtype).encode('ascii'))


def _expert_store_class():
  """zsvision's ExpertStore, importable as `datastructures.ExpertStore` like old pickles."""
  if 'datastructures' not in sys.modules:
    module = types.ModuleType('datastructures')

    class ExpertStore:
      def __init__(self, keylist, dim, dtype=np.float16):
        self.keys, self.dim, self.store_dtype = keylist, dim, dtype
        self.store = np.zeros((len(keylist), dim), dtype=dtype)
        self.keymap = {k: i for i, k in enumerate(keylist)}
        self.missing = set()

    ExpertStore.__module__ = 'datastructures'
    ExpertStore.__qualname__ = 'ExpertStore'
    module.ExpertStore = ExpertStore
    sys.modules['datastructures'] = module
  return sys.modules['datastructures'].ExpertStore


def item_ids(dataset: str, split: str, n: int) -> list[str]:
  """`n` ids of a split in the dataset's id style; no id is in two splits."""
  style = {'audiocaps': '{yt}_{ms}', 'activitynet_captions': 'v_{yt}', 'queryd': 'video-{yt}',
           'queryd_segments': '{yt}-{yt}_{hex}', 'sounddescs': 'nhu{serial:08d}'}.get(
               dataset, '{yt}_{split}{i}.wav')
  split_offset = 10**6 * {'val': 1, 'test': 2}.get(split, 0)  # BBC ids carry no split name
  return [style.format(yt=f'{split[:2]}Yt{i:04d}xQ', ms=1000 * i + 20000 * (i % 2),
                       serial=split_offset + 1000 * i, hex=f'{i:024x}', split=split, i=i)
          for i in range(n)]


def make_contents(dataset: str, sizes: dict[str, int] | None = None, seed: int = 0) -> dict:
  """Random features, captions and word vectors of a miniature; what the files will hold."""
  _, _, splits, _, _, experts = LAYOUTS[dataset]
  rng = np.random.default_rng(seed)
  sizes = sizes or {s: 4 for s in splits}
  ids = {s: item_ids(dataset, s, sizes[s]) for s in splits}
  all_ids = [i for s in splits for i in ids[s]]
  features = {}
  for name, (_, dim, avg, gaps) in experts.items():
    values = {}
    for k, item in enumerate(all_ids):
      if gaps and k % 3 == 1:
        values[item] = None  # missing: absent key or NaN, depending on the file
      elif avg:
        values[item] = rng.normal(size=dim).astype(np.float32)
      else:
        values[item] = rng.normal(size=(1 + (k * 7) % 9, dim)).astype(np.float32)
    features[name] = values
  captions, vectors = {}, {}
  for k, item in enumerate(all_ids):
    n_caps = 5 if dataset in ('clotho', 'synthcaps') else 1 + k % 3
    captions[item] = [[f'word{j}' for j in range(2 + (k + c) % 5)] for c in range(n_caps)]
    vectors[item] = [rng.normal(size=(len(c), 300)).astype(np.float32) for c in captions[item]]
  return {'ids': ids, 'features': features, 'captions': captions, 'vectors': vectors}


def write_release(dataset: str, directory: pathlib.Path, contents: dict,
                  archive: bool = True) -> pathlib.Path:
  """Writes the release; returns a manual dir holding the .tar.gz, or the unpacked folder."""
  name, folder, splits, caption_file, w2v_file, experts = LAYOUTS[dataset]
  unpacked = directory / 'unpacked'
  root = unpacked / 'data' / folder / 'structured-symlinks'
  root.mkdir(parents=True, exist_ok=True)
  for split, list_file in splits.items():
    (root / list_file).write_text(''.join(f'{i}\n' for i in contents['ids'][split]))
  for expert, (path, dim, avg, _) in experts.items():
    values = contents['features'][expert]
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.endswith('.hickle'):
      write_hickle4(target, {k: (float('nan') if v is None else v) for k, v in values.items()})
    elif avg and expert in ('inst', 'scene'):  # as zsvision ExpertStore objects
      store = _expert_store_class()(list(values), dim)
      for k, v in values.items():
        store.store[store.keymap[k]] = np.nan if v is None else v
      target.write_bytes(pickle.dumps(store, protocol=2))
      for k, v in values.items():  # the file holds float16: keep what it really stores
        if v is not None:
          values[k] = v.astype(np.float16).astype(np.float32)
    else:
      target.write_bytes(pickle.dumps({k: v for k, v in values.items() if v is not None},
                                      protocol=2))
  for relative, table in ((caption_file, contents['captions']), (w2v_file, contents['vectors'])):
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(pickle.dumps(table, protocol=2))
  if not archive:
    return unpacked
  manual = directory / 'manual'
  manual.mkdir(exist_ok=True)
  with tarfile.open(manual / f'{name}-experts-audio-only.tar.gz', 'w:gz') as tar:
    tar.add(unpacked / 'data', arcname='data')
  return manual
