"""Reads `torch.save` files (zip serialisation, torch >= 1.6) without torch.

Tensors come back as NumPy arrays. The unpickler only builds a small allow-list of classes
(containers, paths, NumPy scalars, torch tensor rebuilders); any other class, such as the
reference's pickled `parse_config.ConfigParser` (REFERENCE §3.1, §7.19), becomes an inert
`Opaque` object holding the pickled state, so a checkpoint can never run code on load.
"""

import argparse
import codecs
import collections
import io
import pathlib
import pickle
import zipfile
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class TorchFileError(ValueError):
  """The file is not a readable torch.save archive."""


class Opaque:
  """Stands for an instance of a class we do not import; keeps what was pickled."""
  _module = _name = ''

  def __init__(self, *args):
    self.args = args

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.state = state

  def __repr__(self):
    return f'<Opaque {self._module}.{self._name}>'


def _opaque_class(module: str, name: str) -> type:
  return type(name, (Opaque,), {'_module': module, '_name': name})


class _StorageType:
  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
  del unused  # requires_grad, backward hooks, metadata
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


def _numpy_scalar(dtype, data=None):
  return np.frombuffer(data, dtype=dtype)[0]


_SAFE = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice, ('builtins', 'complex'): complex,
    ('pathlib', 'PosixPath'): pathlib.PurePosixPath,
    ('pathlib', 'WindowsPath'): pathlib.PureWindowsPath,
    ('pathlib', 'PurePosixPath'): pathlib.PurePosixPath,
    ('pathlib', 'PureWindowsPath'): pathlib.PureWindowsPath,
    ('argparse', 'Namespace'): argparse.Namespace,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): codecs.encode,  # how protocol-2 pickles spell bytes
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file, encoding='latin1')
    self._archive = archive
    self._prefix = prefix
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _SAFE:
      return _SAFE[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    return _opaque_class(module, name)

  def persistent_load(self, pid):
    kind, storage_type, key, _, numel = pid[:5]
    if kind != 'storage':
      raise TorchFileError(f'unsupported persistent id {kind!r}')
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f'unsupported tensor storage {storage_type!r} (key {key})')
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}data/{key}')
      array = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder('<'))
      if array.size != numel:
        raise TorchFileError(f'storage {key}: {array.size} elements, expected {numel}')
      self._storages[key] = array.astype(storage_type.dtype)
    return self._storages[key]


def load_pth(path: str | pathlib.Path) -> Any:
  """Loads a torch.save zip archive; tensors become NumPy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no checkpoint file at {path}')
  if not zipfile.is_zipfile(path):
    raise TorchFileError(
        f'{path} is not a zip-serialised torch checkpoint (torch >= 1.6). Files saved with '
        '_use_new_zipfile_serialization=False are not supported: re-save them with a recent '
        'torch (torch.save(torch.load(f), f)).')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise TorchFileError(f'{path}: expected one <prefix>/data.pkl in the archive, '
                           f'found {pickles or "none"}')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = f'{prefix}byteorder'
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b'little':
      raise TorchFileError(f'{path}: big-endian checkpoints are not supported')
    data = io.BytesIO(archive.read(pickles[0]))
    try:
      return _Unpickler(data, archive, prefix).load()
    except (pickle.UnpicklingError, EOFError, KeyError) as e:
      raise TorchFileError(f'{path}: corrupt checkpoint ({e})') from e
