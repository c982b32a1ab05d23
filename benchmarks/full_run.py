r"""Wall time of a whole paper-protocol run at AudioCaps sizes, on synthetic features, beside
the PyTorch original's run.

  python -m benchmarks.full_run [--variant=ce] [--epochs=20] [--train=49291]
      [--data_on_device] [--dtype=float32] [--workdir=DIR] [--nobaseline] [--threads=N]

Random features and captions with AudioCaps shapes (49,291 train, 428 val, 816 test clips;
VGGish 10 x 128, VGGSound 32 x 512, text 52 tokens) go through the real
`train_and_evaluate`: every epoch trains, validates and checkpoints (latest and best), then
the best checkpoint is evaluated on the test split with 5 captions per clip. The wall
time excludes only the making of the random data. Metrics are meaningless (random data).

Then, in the same process on the same data, the original's run (benchmarks/torch_baseline.py,
float32 as the reference trains, PyTorch on `--threads` threads): every epoch, at the
reference's learning rate for that epoch (decayed x0.95 per epoch), `torch_baseline.train_step`
over the same batches in the same order as ours (the last, partial batch cut to its real
items, as the reference's `drop_last=False` loader gives it), then validation (an eval-mode
forward giving the whole similarity matrix of the val split, first caption only, sort-based
ranks), keeping the weights of the best epoch (t2a geometric mean, ties to the later epoch);
at the end those weights are saved, reloaded and tested on the test split, 5 captions per
clip, in one eval-mode pass. It starts from PyTorch's own seeded initialisation, not ours.
Its wall time is measured the same way; the ratio is original / ours (> 1: ours is faster).
"""

import copy
import os
import pathlib
import tempfile
import time

from absl import app, flags
import jax
import numpy as np
import torch

from benchmarks import torch_baseline
from benchmarks.common import (
  emit,
  machine,
  peak_host_memory_gb,
  set_threads,
  synthetic_datasets,
  table,
)
from configs import common
from jaxretrieval import input_pipeline, train
from jaxretrieval.data.registry import EXPERTS
from jaxretrieval.evaluation import eval_queries
from jaxretrieval.metrics import metrics_from_ranks
from jaxretrieval.models.spec import model_spec

_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_EPOCHS = flags.DEFINE_integer('epochs', 20, 'epochs')
_TRAIN = flags.DEFINE_integer('train', 49291, 'training clips (AudioCaps: 49,291)')
_ON_DEVICE = flags.DEFINE_bool('data_on_device', False, 'keep the training set on device')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
_WORKDIR = flags.DEFINE_string('workdir', '', 'workdir (default: a temporary one)')
_BASELINE = flags.DEFINE_bool('baseline', True, "run the PyTorch original's whole run too")
_THREADS = flags.DEFINE_integer('threads', os.cpu_count(), 'PyTorch threads')


def main(argv):
  del argv
  set_threads(_THREADS.value)
  config = common.experiment('audiocaps', _VARIANT.value, ('vggish', 'vggsound'))
  config.num_epochs, config.dtype = _EPOCHS.value, _DTYPE.value
  config.data_on_device = _ON_DEVICE.value
  data = synthetic_datasets(config, train=_TRAIN.value, val=428, test=816)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(_WORKDIR.value or tmp)
    start = time.perf_counter()
    results = train.train_and_evaluate(config, str(workdir), data=data)
    seconds = time.perf_counter() - start
  steps = input_pipeline.steps_per_epoch(data.train, config.batch_size) * _EPOCHS.value
  record = {'benchmark': 'full_run', 'variant': _VARIANT.value, 'epochs': _EPOCHS.value,
            'train_clips': _TRAIN.value, 'dtype': _DTYPE.value,
            'data_on_device': _ON_DEVICE.value, 'steps': steps, 'wall_s': seconds,
            'train_loop_s': results['train_seconds'], 'steps_per_s': steps / seconds,
            'test_eval_s': results['test']['seconds'],
            'peak_host_memory_gb': peak_host_memory_gb(), 'torch_threads': _THREADS.value,
            **machine()}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    record['peak_device_memory_gb'] = stats['peak_bytes_in_use'] / 1e9
  if _BASELINE.value:
    original = original_run(config, data)
    record.update(original_dtype='float32', original_wall_s=original['wall_s'],
                  original_train_loop_s=original['train_loop_s'],
                  original_test_eval_s=original['test_eval_s'],
                  ratio=original['wall_s'] / seconds)
  emit(record)
  print(table([record], ['variant', 'epochs', 'train_clips', 'dtype', 'data_on_device', 'steps',
                         'original_wall_s', 'wall_s', 'ratio', 'steps_per_s',
                         'original_train_loop_s', 'train_loop_s', 'original_test_eval_s',
                         'test_eval_s', 'peak_host_memory_gb']))


def original_run(config, data) -> dict:
  """The original's whole run on `data` (module docstring): seconds of the run, of its
  epochs' training and validation, and of its test evaluation."""
  start = time.perf_counter()
  torch.manual_seed(config.seed)
  model = torch_baseline.from_spec(model_spec(config))
  o = config.optimizer
  optimizer = torch_baseline.Ranger(model.parameters(), lr=o.learning_rate,
                                    weight_decay=o.weight_decay)
  val = _eval_inputs(data.val, config.val_captions)
  best, best_score, train_loop = None, -np.inf, 0.0
  for epoch in range(config.num_epochs):
    epoch_start = time.perf_counter()
    for group in optimizer.param_groups:
      group['lr'] = o.learning_rate * o.lr_decay ** epoch
    for host in input_pipeline.train_batches(data.train, epoch, config.seed, config.batch_size):
      real = host['row_mask'] > 0
      batch = torch_baseline.batch_from_host(jax.tree.map(lambda x: x[real], host), data.words)
      torch_baseline.train_step(model, optimizer, batch, config.loss.margin)
    score = _metrics(model, data.words, *val)['t2a'][train.SELECTION_METRIC]
    train_loop += time.perf_counter() - epoch_start  # as ours: training and validation
    if score >= best_score:
      best, best_score = copy.deepcopy(model.state_dict()), score
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'trained_model.pth'
    torch.save(best, path)
    model.load_state_dict(torch.load(path))
  test_start = time.perf_counter()
  _metrics(model, data.words, *_eval_inputs(data.test, config.num_test_captions))
  end = time.perf_counter()
  return {'wall_s': end - start, 'train_loop_s': train_loop, 'test_eval_s': end - test_start}


def _eval_inputs(split, num_captions: int):
  """A split's evaluation tensors: experts under reference names, availability, caption
  rows (`eval_queries`) and query masks."""
  rows, masks = eval_queries(split, num_captions)
  experts = {EXPERTS[e].reference_name: torch.from_numpy(x) for e, x in split.experts.items()}
  ind = torch.from_numpy(np.ascontiguousarray(split.availability, np.float32))
  return experts, ind, split.caption_ids[rows], masks


def _metrics(model, words, experts, ind, caption_ids, masks) -> dict:
  sims = torch_baseline.similarities(model, experts, ind, torch.from_numpy(words[caption_ids]))
  t2a, a2t = torch_baseline.retrieval_ranks(sims, masks)
  return {'t2a': metrics_from_ranks(t2a), 'a2t': metrics_from_ranks(a2t)}


if __name__ == '__main__':
  app.run(main)
