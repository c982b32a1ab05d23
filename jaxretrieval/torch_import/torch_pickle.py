"""Reads `torch.save` files without torch: the zip serialisation (torch >= 1.6) and the
legacy stream format of older releases (e.g. VGGSound's `H.pth.tar`, torchvggish's `.pth`).

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
from typing import Any
import zipfile

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
  size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
  # The view must lie inside its storage: a crafted file could otherwise read other memory.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if (offset < 0 or len(stride) != len(size) or any(s < 0 for s in stride) or
      any(n < 0 for n in size) or last >= len(storage)):
    raise TorchFileError(f'a tensor of shape {size}, strides {stride} at offset {offset} does '
                         f'not fit its storage of {len(storage)} elements (corrupt file)')
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
  """Allow-listed unpickler; tensor storages come from `read_storage(key, dtype, numel)`."""

  def __init__(self, file, read_storage):
    super().__init__(file, encoding='latin1')
    self._read_storage = read_storage
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
    if len(pid) > 5 and pid[5] is not None:
      raise TorchFileError(f'storage {key}: tensor views of torch < 0.4 are not supported')
    if key not in self._storages:
      array = self._read_storage(str(key), storage_type.dtype, numel)
      if array.size != numel:
        raise TorchFileError(f'storage {key}: {array.size} elements, expected {numel}')
      self._storages[key] = array.astype(storage_type.dtype)
    return self._storages[key]


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _load_zip(path: pathlib.Path) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise TorchFileError(f'{path}: expected one <prefix>/data.pkl in the archive, '
                           f'found {pickles or "none"}')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = f'{prefix}byteorder'
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b'little':
      raise TorchFileError(f'{path}: big-endian checkpoints are not supported')

    def read_storage(key, dtype, numel):
      del numel  # checked by the unpickler
      return np.frombuffer(archive.read(f'{prefix}data/{key}'), dtype=dtype.newbyteorder('<'))

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), read_storage).load()


def _load_legacy(path: pathlib.Path, f) -> Any:
  """The pre-1.6 stream: magic, protocol, sys_info, the object, its storage keys, then each
  storage as a little-endian int64 element count and the raw elements, in key order.

  Tensors are rebuilt while the object is unpickled, before the storages that follow it
  can be read; so a first pass records the storages' dtypes and the second builds tensors.
  """
  header = _Unpickler(f, None)
  magic = header.load()
  if magic != _LEGACY_MAGIC:
    raise TorchFileError(f'{path}: not a torch checkpoint (zip-serialised or legacy)')
  header.load(), header.load()  # protocol version, sys_info
  start = f.tell()
  seen: dict[str, tuple[np.dtype, int]] = {}
  size = path.stat().st_size

  def record(key, dtype, numel):
    if not 0 <= numel * dtype.itemsize <= size:  # a storage cannot be larger than the file
      raise TorchFileError(f'{path}: storage {key} claims {numel} elements, more than the '
                           'file holds (corrupt file)')
    seen[key] = (dtype, numel)
    return np.zeros(numel, dtype)

  _Unpickler(f, record).load()
  keys = _Unpickler(f, None).load()
  if not isinstance(keys, list) or set(keys) != set(seen):
    raise TorchFileError(f'{path}: storage key list does not match the tensors (truncated file?)')
  data = {}
  for key in keys:
    count = f.read(8)
    dtype, numel = seen[key]
    if len(count) < 8 or int.from_bytes(count, 'little') != numel:
      raise TorchFileError(f'{path}: storage {key} is truncated or has the wrong size')
    raw = f.read(numel * dtype.itemsize)
    if len(raw) != numel * dtype.itemsize:
      raise TorchFileError(f'{path}: storage {key} is truncated; download the file again')
    data[key] = np.frombuffer(raw, dtype=dtype.newbyteorder('<'))
  f.seek(start)
  return _Unpickler(f, lambda key, dtype, numel: data[key]).load()


def load_pth(path: str | pathlib.Path) -> Any:
  """Loads a torch.save file (zip archive or legacy stream); tensors become NumPy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no checkpoint file at {path}')
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    with open(path, 'rb') as f:
      return _load_legacy(path, f)
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, IndexError,
          TypeError) as e:
    if isinstance(e, TorchFileError):
      raise
    raise TorchFileError(
        f'{path}: not a zip-serialised (torch >= 1.6) or legacy torch checkpoint, or a '
        f'corrupt one ({type(e).__name__}: {e}); download it again') from e
