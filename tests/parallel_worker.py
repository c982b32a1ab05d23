"""One global-batch loss/gradient computation, run in subprocesses by test_parallel.py.

  python -m tests.parallel_worker OUT.npz DEVICES [PROCESS_ID NUM_PROCESSES PORT]

Every process builds the same model and global batch from fixed seeds, feeds its slice of
the batch (split over its DEVICES local devices) to the pmapped `loss_and_grads`, and
writes the loss, the gradients and the new BatchNorm statistics.
"""

import os
import sys

out, devices = sys.argv[1], int(sys.argv[2])
os.environ['XLA_FLAGS'] = (f"{os.environ.get('XLA_FLAGS', '')} "
                           f'--xla_force_host_platform_device_count={devices}')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top

if len(sys.argv) > 3:
  process, processes, port = map(int, sys.argv[3:6])
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', processes, process)
else:
  process, processes = 0, 1

import numpy as np  # pylint: disable=g-import-not-at-top

from tests.parallel_setup import global_step  # pylint: disable=g-import-not-at-top

result = global_step(devices, process, processes)
if process == 0:
  np.savez(out, **result)
if processes > 1:
  jax.distributed.shutdown()
