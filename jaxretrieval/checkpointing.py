"""Orbax checkpoints of a workdir.

Layout: `WORKDIR/checkpoints/{latest,best}/<step>/` with up to three items:
`model` ({'params', 'batch_stats'}), `optimizer` (optimizer state, training state only) and
`meta` (JSON: epoch, step, metrics, data position, provenance). `latest` is written every
epoch and resumes training; `best` holds the epoch selected on validation and is what
evaluation reads. An imported reference checkpoint is written as a `best` checkpoint.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ('model', 'optimizer', 'meta')


def checkpoint_dir(workdir: str | pathlib.Path, kind: str) -> pathlib.Path:
  if kind not in ('latest', 'best'):
    raise ValueError(f'checkpoint kind {kind!r}: expected latest or best')
  return pathlib.Path(workdir).absolute() / 'checkpoints' / kind


def manager(workdir: str | pathlib.Path, kind: str) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest checkpoint of `kind` only."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir, kind), options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, model: Any, meta: dict,
         optimizer: Any = None) -> None:
  """Writes one checkpoint (blocking) and removes the previous one."""
  items = {'model': ocp.args.StandardSave(model), 'meta': ocp.args.JsonSave(meta)}
  if optimizer is not None:
    items['optimizer'] = ocp.args.StandardSave(optimizer)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, items: tuple[str, ...] = ('model', 'meta'),
            targets: dict | None = None, step: int | None = None) -> dict:
  """Restores `items` of a step (default: the newest).

  `targets` (item -> abstract or concrete pytree) fix structure and dtypes; an item without
  one is restored in its saved structure as host arrays.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {mngr.directory}')
  targets = targets or {}
  args = {k: ocp.args.JsonRestore() if k == 'meta' else ocp.args.StandardRestore(targets.get(k))
          for k in items}
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return {k: restored[k] for k in items}


def latest_step(workdir: str | pathlib.Path, kind: str) -> int | None:
  """Step of the newest `kind` checkpoint of a workdir, None when there is none."""
  directory = checkpoint_dir(workdir, kind)
  if not directory.exists():
    return None
  return manager(workdir, kind).latest_step()


def host_tree(tree: Any) -> Any:
  """A pytree of device arrays as NumPy arrays (for saving replicated or sharded state)."""
  return jax.tree.map(lambda x: jax.device_get(x), tree)
