r"""Where a training step's time goes: forward, backward and the optimizer update, measured
by timing the step's parts as separate pmapped programs (alternating, same batches).

  python -m benchmarks.profile_step [--variant=ce] [--dataset=clotho] [--rounds=5]
      [--xla_profile_dir=DIR]

Parts: `forward` (embeddings and loss, training-mode BatchNorm), `forward+backward` (loss
and gradients, the gradient all-reduce), and `step` (that plus the Ranger update and the new
state); backward = forward+backward - forward, optimizer = step - forward+backward. Also
`step, fused Ranger`: the same step with `optim.ranger_apply` (one fused update writing the
parameters; config.optimizer.fused=True) in place of optax's updates and `apply_gradients`
(the `step` column, the default).

With `--xla_profile_dir` a jax.profiler trace of `--steps` fused steps is written there too
(TensorBoard's profile plugin or Perfetto open it) and its events are summed by name into a
per-op table; run with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true so that XLA:CPU
records each executed op (fusion, dot, ...).
"""


import collections
import gzip
import json
import pathlib
import re

from absl import app, flags
import jax

from benchmarks.common import alternate, emit, machine, synthetic_datasets, table
from configs import common
from jaxretrieval import replicas, train
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import contrastive_loss, loss_and_grads, model_inputs, train_step

_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_DATASET = flags.DEFINE_enum('dataset', 'clotho', ['clotho', 'audiocaps'], 'shapes')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'timed rounds')
_STEPS = flags.DEFINE_integer('steps', 3, 'calls per round')
_PARTS = flags.DEFINE_bool('parts', True, 'time forward and forward+backward too (--noparts: '
                           'only the two whole steps, optax chain and fused, alternate)')
_PROFILE_DIR = flags.DEFINE_string('xla_profile_dir', None, 'write a jax.profiler trace here')


def main(argv):
  del argv
  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  run = train.Experiment(config, None, synthetic_datasets(config, train=256, val=8, test=8))
  lr = config.optimizer.learning_rate
  batches = list(run.batches(0))
  kw = dict(model=run.model, loss_config=config.loss)

  def forward(s, b, t):
    inputs = model_inputs(b, t)
    (text, weights, audio), _ = run.model.apply(
        {'params': s.params, 'batch_stats': s.batch_stats}, inputs, train=True,
        mutable=['batch_stats'], method=run.model.embed)
    return contrastive_loss(s.params, config.loss, run.spec.expert_names, text, weights,
                            audio, b['availability'], b['row_mask'] > 0)

  parts = {
      'forward': jax.pmap(forward, axis_name=AXIS),
      'forward+backward': jax.pmap(
          lambda s, b, t: loss_and_grads(s.params, s.batch_stats, b, t, **kw),
          axis_name=AXIS),
  }
  steps = {}
  for fused in (False, True):
    config.optimizer.fused = fused
    steps[fused] = run.compile_train_step(lr)
  boxes = {fused: {'state': step(replicas.replicate(run.new_state(lr)), batches[0])[0]}
           for fused, step in steps.items()}
  box = boxes[False]

  def timed_part(fn):
    def go():
      for i in range(_STEPS.value):
        out = fn(box['state'], batches[i % len(batches)], run.word_table)
      jax.block_until_ready(out)
    return go

  def whole(fused):
    def go():
      s = boxes[fused]['state']
      for i in range(_STEPS.value):
        s, _ = steps[fused](s, batches[i % len(batches)])
      boxes[fused]['state'] = jax.block_until_ready(s)
    return go

  contenders = {name: timed_part(fn) for name, fn in parts.items()} if _PARTS.value else {}
  contenders['step'] = whole(False)
  contenders['fused'] = whole(True)
  for fn in contenders.values():
    fn()  # compile
  times = {k: v['median_s'] / _STEPS.value * 1000 for k, v in
           alternate(contenders, _ROUNDS.value).items()}
  record = {'benchmark': 'profile_step', 'dataset_shapes': _DATASET.value,
            'variant': _VARIANT.value, 'step_ms': times['step'],
            'step_fused_ranger_ms': times['fused'], 'rounds': _ROUNDS.value, **machine()}
  if _PARTS.value:
    record.update(forward_ms=times['forward'],
                  backward_ms=times['forward+backward'] - times['forward'],
                  optimizer_ms=times['step'] - times['forward+backward'],
                  fused_optimizer_ms=times['fused'] - times['forward+backward'])
  emit(record)
  print(table([record], ['dataset_shapes', 'variant', 'forward_ms', 'backward_ms',
                         'optimizer_ms', 'step_ms', 'fused_optimizer_ms',
                         'step_fused_ranger_ms']))
  if _PROFILE_DIR.value:
    with jax.profiler.trace(_PROFILE_DIR.value, create_perfetto_trace=True):
      whole(True)()
    opt = run.optimisation(lr)
    hlo = jax.pmap(lambda s, b, t: train_step(
        s, b, t, update=opt.update, schedule=opt.schedule, **kw),
                   axis_name=AXIS).lower(boxes[True]['state'], batches[0],
                                         run.word_table).compile().as_text()
    print(_top_ops(pathlib.Path(_PROFILE_DIR.value), hlo))


def _top_ops(folder: pathlib.Path, hlo: str, top: int = 30) -> str:
  """The trace's XLA ops by total thread time per step (XLA:CPU records one event per
  executed op with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true; an op split over both
  cores counts twice), named by the JAX operation they come from (the HLO's metadata)."""
  path = max(folder.rglob('*.trace.json.gz'), key=lambda p: p.stat().st_mtime)
  events = json.loads(gzip.decompress(path.read_bytes()))
  events = events['traceEvents'] if isinstance(events, dict) else events
  origin = dict(re.findall(r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]+)"', hlo))
  totals = collections.defaultdict(float)
  for e in events:
    op = e.get('args', {}).get('hlo_op')
    if e.get('ph') == 'X' and op:
      totals[op] += e['dur'] / 1000 / _STEPS.value
  rows = [{'op': op, 'from': origin.get(op, '')[-90:], 'ms_per_step': ms}
          for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
  return table(rows, ['op', 'from', 'ms_per_step'])


if __name__ == '__main__':
  app.run(main)
