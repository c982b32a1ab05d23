"""The train step (REFERENCE §4): one global batch's loss, gradients and parameter update,
as pure functions that `train` pmaps over the local devices (the tests and benchmarks pmap
them too, without `train`'s data, checkpoints and writers).

Each device embeds its shard; the embeddings are all-gathered so the ranking loss sees the
whole global batch's negatives, BatchNorm takes its statistics over the global batch, and
the gradients are summed over the devices.
"""

import functools
from typing import Any, NamedTuple

from clu import metrics as clu_metrics
from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxretrieval import losses
from jaxretrieval.models import Batch, RetrievalModel, mixture_similarity, mmt
from jaxretrieval.optim import Update, ranger, ranger_apply
from jaxretrieval.replicas import AXIS


class TrainState(train_state.TrainState):
  batch_stats: Any


def new_train_state(apply_fn, variables: dict, tx: optax.GradientTransformation,
                    opt_state: optax.OptState | None = None, step: int = 0) -> TrainState:
  """A TrainState on `variables` ({'params', 'batch_stats'}) at `step`, with `opt_state`
  (default: `tx.init`'s, run as one program: eagerly, each leaf shape would compile a program
  of its own)."""
  if opt_state is None:
    opt_state = jax.jit(tx.init)(variables['params'])
  return TrainState(step=step, apply_fn=apply_fn, params=variables['params'], tx=tx,
                    opt_state=opt_state, batch_stats=variables['batch_stats'])


@struct.dataclass
class FirstNonFiniteStep(clu_metrics.Metric):
  """The first step (1-based) whose loss was NaN or Inf; NEVER when every loss was finite."""
  step: jax.Array
  NEVER = np.iinfo(np.int32).max

  @classmethod
  def from_model_output(cls, loss: jax.Array, step: jax.Array, **_) -> 'FirstNonFiniteStep':
    return cls(jnp.where(jnp.isfinite(loss), cls.NEVER, step).astype(jnp.int32))

  def merge(self, other: 'FirstNonFiniteStep') -> 'FirstNonFiniteStep':
    return type(self)(jnp.minimum(self.step, other.step))

  def compute(self) -> jax.Array:
    return self.step


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Per-step training metrics, merged on the device between two logs (no host sync)."""
  loss: clu_metrics.Average.from_output('loss')
  learning_rate: clu_metrics.Average.from_output('learning_rate')
  grad_norm: clu_metrics.Average.from_output('grad_norm')
  first_nonfinite_step: FirstNonFiniteStep


def lr_schedule(optimizer, steps_per_epoch: int, base_lr: float) -> optax.Schedule:
  """base_lr * decay^(epoch - 1): decayed once per epoch, after validation (§4.3).
  `optimizer` is config.optimizer."""
  decay = optimizer.lr_decay
  return lambda count: base_lr * decay ** (count // steps_per_epoch)


def make_optimizer(optimizer, schedule) -> optax.GradientTransformation:
  """config.optimizer's optax transformation."""
  if optimizer.name == 'ranger':
    return ranger(schedule, optimizer.weight_decay)
  if optimizer.name == 'adamw':
    return optax.adamw(schedule, weight_decay=optimizer.weight_decay)
  raise ValueError(f"config.optimizer.name={optimizer.name!r}: expected 'ranger' or 'adamw'")


def make_update(optimizer, schedule) -> Update | None:
  """The step's parameter update: Ranger as one fused pass (`optim.ranger_apply`, the same
  arithmetic and state as `make_optimizer`'s chain) if config.optimizer.fused; None
  (optax's update and `apply_gradients`) otherwise and for other optimizers."""
  if optimizer.name == 'ranger' and optimizer.fused:
    return ranger_apply(schedule, optimizer.weight_decay)
  return None


class Optimisation(NamedTuple):
  """What `config.optimizer` makes for a run: the learning-rate schedule, the optax
  transformation (the TrainState's `tx`) and the step's fused update (`make_update`)."""
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  update: Update | None


# One per distinct optimisation in a process: experiments that share it (a resume, a seed
# sweep, the tests) share their TrainStates' tree structure and so the step's program.
@functools.lru_cache(maxsize=8)
def optimisation(optimizer: ml_collections.FrozenConfigDict, steps_per_epoch: int,
                 base_lr: float) -> Optimisation:
  """The `Optimisation` of config.optimizer (frozen) at `base_lr`; equal arguments give the
  same objects, so TrainStates built on them share the step's compiled program."""
  schedule = lr_schedule(optimizer, steps_per_epoch, base_lr)
  return Optimisation(schedule, make_optimizer(optimizer, schedule),
                      make_update(optimizer, schedule))


def model_inputs(batch: dict, word_table: jax.Array) -> Batch:
  """The model's Batch from a pipeline batch (one caption per item, so the caption rows share
  the items' row mask): word vectors looked up on the device."""
  return Batch(experts=batch['experts'], availability=batch['availability'],
               text=word_table[batch['text_ids']], expert_lengths=batch['expert_lengths'],
               text_lengths=batch['text_lengths'], row_mask=batch['row_mask'],
               text_row_mask=batch['row_mask'])


def contrastive_loss(params, loss_config, names, text, weights, audio, availability,
                     valid) -> jax.Array:
  """This device's share of the global-batch loss (summing over devices gives the loss).
  `availability` is what the similarity sees (MMT: `mmt.scored_availability`)."""
  gather = functools.partial(jax.lax.all_gather, axis_name=AXIS, tiled=True)
  all_text, all_weights, all_audio = gather(text), gather(weights), gather(audio)
  all_avail, all_valid = gather(availability), gather(valid)
  s_rows = mixture_similarity(text, weights, all_audio, all_avail, names)  # [b, B]
  s_cols = mixture_similarity(all_text, all_weights, audio, availability, names)  # [B, b]
  offset = jax.lax.axis_index(AXIS) * valid.shape[0]
  if loss_config.name == 'max_margin':
    total, count = losses.max_margin_terms(s_rows, s_cols, offset, all_valid,
                                           loss_config.margin, loss_config.fix_norm)
  elif loss_config.name == 'infonce':
    scale = jnp.minimum(jnp.exp(params['logit_scale']), 100.0)
    total, count = losses.info_nce_terms(s_rows, s_cols, offset, all_valid, scale)
  else:
    raise ValueError(f"config.loss.name={loss_config.name!r}: expected one of {losses.LOSSES}")
  return total / count


def loss_and_grads(params, batch_stats, batch: dict, word_table: jax.Array | None, *,
                   model: RetrievalModel | mmt.MMT, loss_config,
                   dropout_key: jax.Array | None = None):
  """Global-batch loss, its gradients (summed over devices) and the new BN statistics.
  MMT batches (`word_table` None) are the model's inputs as they come; its dropout draws
  from `dropout_key`."""
  if isinstance(model, mmt.MMT):
    inputs, availability = batch, mmt.scored_availability(model.spec, batch['availability'])
  else:
    inputs, availability = model_inputs(batch, word_table), batch['availability']

  def loss_fn(params):
    (text, weights, audio), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, inputs, train=True,
        mutable=['batch_stats'], rngs=None if dropout_key is None else {'dropout': dropout_key},
        method='embed')
    loss = contrastive_loss(params, loss_config, model.spec.expert_names, text, weights, audio,
                            availability, batch['row_mask'] > 0)
    return loss, updates['batch_stats']

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return _sum_over_devices(loss), _sum_over_devices(grads), new_stats


def _sum_over_devices(tree):
  """`psum` over the pmapped devices; on one device the tree itself (XLA:CPU would copy
  the whole gradient for a one-device all-reduce)."""
  return tree if jax.lax.axis_size(AXIS) == 1 else jax.lax.psum(tree, AXIS)


def train_step(state: TrainState, batch: dict, word_table: jax.Array | None, *,
               model: RetrievalModel | mmt.MMT, loss_config, schedule,
               update: Update | None = None, seed: int = 0) -> tuple[TrainState, TrainMetrics]:
  """One optimisation step on this device's shard of the global batch: the parameters move by
  `update(params, grads, opt_state)` (`make_update`), or by `state.tx` when it is None.
  Dropout (MMT's) draws from `seed` folded with the step and the device."""
  dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step),
                                   jax.lax.axis_index(AXIS))
  loss, grads, batch_stats = loss_and_grads(state.params, state.batch_stats, batch, word_table,
                                            model=model, loss_config=loss_config,
                                            dropout_key=dropout_key)
  if update is None:
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  else:
    params, opt_state = update(state.params, grads, state.opt_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              batch_stats=batch_stats)
  metrics = TrainMetrics.single_from_model_output(
      loss=loss, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads),
      step=state.step + 1)
  return new_state, metrics
