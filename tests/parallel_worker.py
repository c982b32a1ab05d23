"""One global-batch loss/gradient computation, run in subprocesses by test_parallel.py.

  python -m tests.parallel_worker OUT.npz DEVICES [PROCESS_ID NUM_PROCESSES PORT]

Every process builds the same model and global batch from fixed seeds, feeds its slice of
the batch (split over its DEVICES local devices) to the pmapped `loss_and_grads`, and
writes the loss, the gradients and the new BatchNorm statistics.
"""

import functools
import os
import sys

out, devices = sys.argv[1], int(sys.argv[2])
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

if len(sys.argv) > 3:
  process, processes, port = map(int, sys.argv[3:6])
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', processes, process)
else:
  process, processes = 0, 1

from flax import jax_utils  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from jaxretrieval import train  # pylint: disable=g-import-not-at-top
from tests.parallel_setup import GLOBAL_BATCH, setup  # pylint: disable=g-import-not-at-top

model, variables, batch, table, loss_config = setup(axis_name=train.AXIS)
per_host = GLOBAL_BATCH // processes
mine = jax.tree.map(lambda x: x[process * per_host:(process + 1) * per_host], batch)
sharded = jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), mine)
step = jax.pmap(functools.partial(train.loss_and_grads, model=model, loss_config=loss_config),
                axis_name=train.AXIS)
loss, grads, stats = step(jax_utils.replicate(variables['params']),
                          jax_utils.replicate(variables['batch_stats']), sharded,
                          jax_utils.replicate(table))
flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v[0]) for k, v in
                     jax.tree_util.tree_flatten_with_path(tree)[0]}
if process == 0:
  np.savez(out, loss=np.asarray(loss[0]), **{'g' + k: v for k, v in flat(grads).items()},
           **{'s' + k: v for k, v in flat(stats).items()})
if processes > 1:
  jax.distributed.shutdown()
