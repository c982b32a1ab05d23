"""Trees for pmapped functions: a copy on every local device, and the first copy on the host.

flax's `jax_utils.replicate` of device arrays and `unreplicate` run one eager `jnp.stack` /
`x[0]` per leaf, and XLA compiles a small program for each new leaf shape (about 25 ms each
on a CPU): a model's variables and optimizer state cost dozens of compiles per run.
These copy through the host instead and compile nothing.
"""

import jax
import numpy as np

AXIS = 'batch'  # the name of the device axis of every pmap of the project


def replicate(tree):
  """`tree` (arrays or NumPy) on every local device, with a new leading axis, laid out as a
  function pmapped over AXIS returns its outputs (so that a pmapped step fed its own outputs
  does not compile again for another input layout)."""
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))

  def copies(x):
    x = np.asarray(x)
    # On a CPU the copies may share the caller's NumPy memory (nothing here writes to it).
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)

  # A pmap's outputs have this layout, also over several processes (where it hands back
  # process-local arrays like these).
  return jax.tree.map(copies, tree)


def first_replica(tree):
  """The first local copy of each leaf of a pmapped function's output (leading axis: the
  local devices), as NumPy arrays (0-d for scalars, as `jax.device_get` gives them)."""
  return jax.tree.map(lambda x: np.asarray(np.asarray(x.addressable_shards[0].data)[0]), tree)
