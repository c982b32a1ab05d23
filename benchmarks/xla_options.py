r"""XLA:CPU compiler options on the real train step: time and exactness, side by side.

  python -m benchmarks.xla_options [--variant=ce] [--dataset=clotho] [--rounds=3] [--steps=3]
      [--options=default,xnn_dot,...]

Compiles the pmapped step of `train.Experiment.compile_train_step`'s arguments once per set of
options (`Lowered.compile(compiler_options=...)`, the same DebugOptions fields as XLA_FLAGS
without the leading `--`), times them alternating round by round, and reports for each the
median step time, the ratio to the default build, and how far one step from the same state
moves the loss and the parameters away from the default build's (exactness: float32 noise is
~1e-6 relative). The option names are those this jaxlib lists (`strings libjax_common.so |
grep xla_cpu_`).
"""

from absl import app, flags
import jax
import numpy as np

from benchmarks.common import alternate, emit, machine, synthetic_datasets, table
from configs import common
from jaxretrieval import replicas, train
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import train_step

# This jaxlib already hands dots (with the element-wise ops and reductions around them) to
# YNNPACK by default (`ynn_fusion` in the compiled HLO); 'eigen_dot' switches that off.
OPTIONS = {
    'default': {},
    'eigen_dot': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INVALID'},
    'xnn_dot': {'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'xnn_graph': {'xla_cpu_experimental_xnn_graph_fusion_mode': 'XNN_GRAPH_FUSION_MODE_GREEDY'},
    'onednn': {'xla_cpu_use_onednn': True},
    'onednn_dot': {'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'concurrency_scheduler': {'xla_cpu_enable_concurrency_optimized_scheduler': True},
    'no_multi_thread_eigen': {'xla_cpu_multi_thread_eigen': False},
}

_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_DATASET = flags.DEFINE_enum('dataset', 'clotho', ['clotho', 'audiocaps'], 'shapes')
_OPTIONS = flags.DEFINE_list('options', list(OPTIONS), f'option sets, of {list(OPTIONS)}')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'timed rounds')
_STEPS = flags.DEFINE_integer('steps', 3, 'steps per round')


def main(argv):
  del argv
  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  run = train.Experiment(config, None, synthetic_datasets(config, train=512, val=8, test=8))
  lr = config.optimizer.learning_rate
  opt = run.optimisation(lr)
  batches = list(run.batches(0))

  def step(state, batch, table):
    return train_step(state, batch, table, model=run.model, loss_config=config.loss,
                      schedule=opt.schedule, update=opt.update)

  initial = run.new_state(lr)  # one optimizer object: the compiled steps take its states
  lowered = jax.pmap(step, axis_name=AXIS, donate_argnums=(0,)).lower(
      replicas.replicate(initial), batches[0], run.word_table)
  compiled, first = {}, {}
  for name in _OPTIONS.value:
    try:
      compiled[name] = lowered.compile(compiler_options=OPTIONS[name])
    except Exception as e:  # pylint: disable=broad-except  (an option this build refuses)
      print(f'{name}: not compiled ({str(e).splitlines()[0][:200]})')
      continue
    first[name] = compiled[name](replicas.replicate(initial), batches[0], run.word_table)
  ref_state, ref_metrics = first['default']
  exactness = {name: (abs(float(m.loss.compute()[0] - ref_metrics.loss.compute()[0])),
                      max(float(np.max(np.abs(a - b))) for a, b in
                          zip(jax.tree.leaves(s.params), jax.tree.leaves(ref_state.params))))
               for name, (s, m) in first.items()}
  boxes = {name: {'state': s} for name, (s, _) in first.items()}

  def contender(name):
    def go():
      s = boxes[name]['state']
      for i in range(_STEPS.value):
        s, _ = compiled[name](s, batches[i % len(batches)], run.word_table)
      boxes[name]['state'] = jax.block_until_ready(s)
    return go

  times = alternate({name: contender(name) for name in first}, _ROUNDS.value)
  rows = []
  for name in first:
    ms = 1000 * times[name]['median_s'] / _STEPS.value
    loss_diff, param_diff = exactness[name]
    rows.append({'benchmark': 'xla_options', 'options': name, 'dataset_shapes': _DATASET.value,
                 'variant': _VARIANT.value, 'step_ms': ms,
                 'speedup': 1000 * times['default']['median_s'] / _STEPS.value / ms,
                 'loss_diff': loss_diff, 'max_param_diff': param_diff, **machine()})
    emit(rows[-1])
  print(table(rows, ['options', 'dataset_shapes', 'variant', 'step_ms', 'speedup', 'loss_diff',
                     'max_param_diff']))


if __name__ == '__main__':
  app.run(main)
