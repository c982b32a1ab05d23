"""Orbax checkpoints of a workdir: one manager, one atomic save per epoch.

Layout: `WORKDIR/checkpoints/<epoch>/` with the items `model` ({'params', 'batch_stats'}),
`optimizer` (optimizer state; absent from an imported checkpoint whose optimizer never
stepped) and `meta` (JSON: epoch, step, learning rate, validation metrics, provenance), and
the epoch's validation score as the checkpoint's Orbax metric. Orbax's preservation policies
keep the two newest epochs (training resumes from the newest readable one) and the best
epoch by validation score, ties going to the later epoch (REFERENCE §4.3), which is what
evaluation reads. An imported reference checkpoint is one such checkpoint.
"""

import errno
import pathlib
from typing import Any, Callable

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

SCORE = 'val_score'  # the Orbax metric that ranks checkpoints (t2a geometric mean)
KEEP_LATEST = 2  # the newest checkpoint and a fallback for when it is unreadable


class CheckpointError(Exception):
  """No usable checkpoint, or one that cannot be written; the message says what to do."""


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / 'checkpoints'


def _score(metrics: dict) -> float:
  return metrics[SCORE]


def manager(workdir: str | pathlib.Path) -> ocp.CheckpointManager:
  """The workdir's CheckpointManager (creates the directory on the first save)."""
  directory = checkpoint_dir(workdir)
  old = [d.name for d in (directory / 'latest', directory / 'best') if d.is_dir()]
  if old:
    raise CheckpointError(
        f'{directory} has the old layout ({", ".join(old)}/): move each '
        f'{directory}/{old[0]}/<epoch> folder to {directory}/<epoch> (newest epoch wins) to use '
        'it with this version')
  policy = policies.AnyPreservationPolicy([
      policies.LatestN(n=KEEP_LATEST),
      policies.BestN(get_metric_fn=_score, n=1, keep_checkpoints_without_metrics=False)])
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False,
                                         preservation_policy=policy)
  handlers = {'model': ocp.StandardCheckpointHandler(),
              'optimizer': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, model: Any, meta: dict,
         optimizer: Any = None, score: float | None = None) -> None:
  """Writes one checkpoint (blocking); Orbax then drops those no policy keeps.

  A checkpoint already at `step` (an unreadable one that training is replacing) is deleted
  first. A full disk is reported in one line with the directory and the size needed.
  """
  items = {'model': ocp.args.StandardSave(model), 'meta': ocp.args.JsonSave(meta)}
  if optimizer is not None:
    items['optimizer'] = ocp.args.StandardSave(optimizer)
  if step in mngr.all_steps():
    logging.warning('Replacing checkpoint %s/%d', mngr.directory, step)
    mngr.delete(step)
  try:
    mngr.save(step, args=ocp.args.Composite(**items),
              metrics=None if score is None else {SCORE: float(score)}, force=True)
    mngr.wait_until_finished()
  except Exception as e:  # orbax wraps OSErrors of its writer threads
    if _is_disk_full(e):
      size = sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves((model, optimizer)))
      raise CheckpointError(
          f'no space left on the device of {mngr.directory} while writing epoch {step} '
          f'(needs about {size / 2**20:.0f} MB): free space there and rerun, training '
          'resumes from the last complete checkpoint') from None
    raise


def _is_disk_full(error: BaseException | None) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def restore(mngr: ocp.CheckpointManager, step: int, items: tuple[str, ...] = ('model', 'meta'),
            targets: dict | None = None) -> dict:
  """Restores `items` of `step`.

  `targets` (item -> abstract or concrete pytree) fix structure and dtypes; an item without
  one is restored in its saved structure as host arrays.
  """
  targets = targets or {}
  args = {k: ocp.args.JsonRestore() if k == 'meta' else ocp.args.StandardRestore(targets.get(k))
          for k in items}
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return {k: restored[k] for k in items}


def model_metadata(mngr: ocp.CheckpointManager, step: int) -> Any:
  """The tree of `step`'s model item as saved, each leaf's shape and dtype: read from that
  item alone (the manager's `item_metadata` also reads the optimizer's, three times larger)."""
  return ocp.StandardCheckpointHandler().metadata(pathlib.Path(mngr.directory) / str(step) /
                                                  'model')


def steps_by_score(mngr: ocp.CheckpointManager) -> list[int]:
  """Every step, best validation score first; ties and steps without a score (an imported
  checkpoint, or an unreadable one) newest first, as BestN in `manager` ranks them."""

  def key(step):
    try:
      metrics = mngr.metrics(step) or {}
    except Exception:  # pylint: disable=broad-except  (unreadable: ranked last)
      metrics = {}
    return metrics.get(SCORE, float('-inf')), step

  return sorted(mngr.all_steps(), key=key, reverse=True)


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The epoch with the best validation score (the newest when none has a score)."""
  steps = steps_by_score(mngr)
  return steps[0] if steps else None


def restore_first_readable(mngr: ocp.CheckpointManager, steps: list[int],
                           read: Callable[[int], Any], what: str) -> tuple[int, Any]:
  """`(step, read(step))` for the first step of `steps` that reads; warns naming each
  unreadable checkpoint, and says which directory to delete when none reads."""
  failures = []
  for step in steps:
    try:
      return step, read(step)
    except CheckpointError:  # readable, but not usable: no older checkpoint does better
      raise
    except Exception as e:  # truncated or corrupt files fail in many ways inside orbax
      reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      failures.append(f'{mngr.directory}/{step} ({reason})')
      logging.warning('Checkpoint %s/%d is unreadable (%s); trying the previous one',
                      mngr.directory, step, reason)
  raise CheckpointError(
      f'no readable checkpoint for {what}: {"; ".join(failures) or "none saved"}. Delete '
      f'{mngr.directory} to start over (or restore the files from a backup)')


def restore_best_model(mngr: ocp.CheckpointManager, template: Any, what: str,
                       check: Callable[[int], None] | None = None) -> tuple[int, Any]:
  """`(step, model variables)` of the best readable checkpoint, shaped like `template`;
  `check(step)` may refuse a checkpoint first (raising CheckpointError)."""

  def read(step):
    if check is not None:
      check(step)
    return restore(mngr, step, ('model',), {'model': template})['model']

  return restore_first_readable(mngr, steps_by_score(mngr), read, what)


def latest_step(workdir: str | pathlib.Path) -> int | None:
  """Newest checkpoint step of a workdir, None when there is none."""
  if not checkpoint_dir(workdir).exists():
    return None
  return manager(workdir).latest_step()
