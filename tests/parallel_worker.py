"""Global-batch loss/gradient computations, run in subprocesses by test_parallel.py.

  python -m tests.parallel_worker OUT DEVICES[,DEVICES...] [PROCESS_ID NUM_PROCESSES PORT]

Every process builds the same model and global batch from fixed seeds and, for each device
count D of the list, feeds its slice of the batch (split over D local devices) to the
pmapped `loss_and_grads`; the first process writes the loss, the gradients and the new
BatchNorm statistics to OUT-D.npz. The process has as many local devices as the largest D.
One process also writes OUT-replicas.npz (`parallel_setup.replicas_through_pmap`).
"""

import os
import sys

out, counts = sys.argv[1], [int(d) for d in sys.argv[2].split(',')]
os.environ['XLA_FLAGS'] = (f"{os.environ.get('XLA_FLAGS', '')} "
                           f'--xla_force_host_platform_device_count={max(counts)}')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

if len(sys.argv) > 3:
  process, processes, port = map(int, sys.argv[3:6])
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', processes, process)
else:
  process, processes = 0, 1

import numpy as np  # pylint: disable=g-import-not-at-top

from tests.parallel_setup import (  # pylint: disable=g-import-not-at-top
  global_step,
  replicas_through_pmap,
)

for devices in counts:
  result = global_step(devices, process, processes)
  if process == 0:
    np.savez(f'{out}-{devices}.npz', **result)
if processes == 1:
  np.savez(f'{out}-replicas.npz', **replicas_through_pmap())
if processes > 1:
  jax.distributed.shutdown()
