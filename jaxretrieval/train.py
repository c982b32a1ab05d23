"""Training and evaluation (REFERENCE §4): `train_and_evaluate(config, workdir)`.

The train step is pmapped over all local devices: each device embeds its shard, the
embeddings are all-gathered so the ranking loss sees the whole global batch's negatives,
BatchNorm takes its statistics over the global batch, and gradients are summed. Every epoch
ends with validation (first caption only), a `latest` checkpoint and, when the validation
t2a geometric mean is at least the best so far, a `best` one; the test split is evaluated
with the best checkpoint at the end. Re-running in the same workdir resumes.
"""

import dataclasses
import functools
import pathlib
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from flax import jax_utils
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxretrieval import checkpointing
from jaxretrieval import input_pipeline
from jaxretrieval import losses
from jaxretrieval.evaluation import Embedder, evaluate_split, write_results
from jaxretrieval.experts import model_spec
from jaxretrieval.models import ModelSpec, RetrievalModel, mixture_similarity
from jaxretrieval.optim import ranger, restart_schedule, with_reference_state

AXIS = 'batch'
SELECTION_METRIC = 'geometric_mean_R1-R5-R10'


class TrainState(train_state.TrainState):
  batch_stats: Any


def expert_dims(builder) -> dict[str, tuple[int, str]]:
  """Expert widths of a TFDS dataset: name -> (dim, 'vlad' | 'avg')."""
  features = builder.info.features['experts']
  return {e: (f.shape[-1], 'vlad' if len(f.shape) == 2 else 'avg')
          for e, f in features.items()}


def lr_schedule(config, steps_per_epoch: int, base_lr: float) -> optax.Schedule:
  """base_lr * decay^(epoch - 1): decayed once per epoch, after validation (§4.3)."""
  decay = config.optimizer.lr_decay
  return lambda count: base_lr * decay ** (count // steps_per_epoch)


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  o = config.optimizer
  if o.name == 'ranger':
    return ranger(schedule, o.weight_decay)
  if o.name == 'adamw':
    return optax.adamw(schedule, weight_decay=o.weight_decay)
  raise ValueError(f"config.optimizer.name={o.name!r}: expected 'ranger' or 'adamw'")


def model_inputs(batch: dict, word_table: jax.Array) -> dict:
  """The model's batch from a pipeline batch: word vectors looked up on the device."""
  return {'experts': batch['experts'], 'expert_lengths': batch['expert_lengths'],
          'availability': batch['availability'], 'text': word_table[batch['text_ids']],
          'text_lengths': batch['text_lengths'], 'row_mask': batch['row_mask'],
          'text_row_mask': batch['row_mask']}


def contrastive_loss(params, loss_config, text, weights, audio, availability,
                     valid) -> jax.Array:
  """This device's share of the global-batch loss (summing over devices gives the loss)."""
  gather = functools.partial(jax.lax.all_gather, axis_name=AXIS, tiled=True)
  all_text, all_weights, all_audio = gather(text), gather(weights), gather(audio)
  all_avail, all_valid = gather(availability), gather(valid)
  s_rows = mixture_similarity(text, weights, all_audio, all_avail)  # [b, B]
  s_cols = mixture_similarity(all_text, all_weights, audio, availability)  # [B, b]
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


def loss_and_grads(params, batch_stats, batch: dict, word_table: jax.Array, *,
                   model: RetrievalModel, loss_config):
  """Global-batch loss, its gradients (summed over devices) and the new BN statistics."""
  inputs = model_inputs(batch, word_table)

  def loss_fn(params):
    (text, weights, audio), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, inputs, train=True,
        mutable=['batch_stats'], method=RetrievalModel.embed)
    loss = contrastive_loss(params, loss_config, text, weights, audio,
                            batch['availability'], batch['row_mask'] > 0)
    return loss, updates['batch_stats']

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return jax.lax.psum(loss, AXIS), jax.lax.psum(grads, AXIS), new_stats


def train_step(state: TrainState, batch: dict, word_table: jax.Array, *, model: RetrievalModel,
               loss_config, schedule) -> tuple[TrainState, dict]:
  """One optimisation step on this device's shard of the global batch."""
  loss, grads, batch_stats = loss_and_grads(state.params, state.batch_stats, batch, word_table,
                                            model=model, loss_config=loss_config)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {'loss': loss, 'learning_rate': schedule(state.step),
             'grad_norm': optax.tree.norm(grads)}
  return new_state, metrics


def create_train_state(rng, model: RetrievalModel, tx, sample: dict) -> TrainState:
  variables = jax.jit(functools.partial(model.init, train=False))(rng, sample)
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           batch_stats=variables['batch_stats'], tx=tx)


def _check_config(config) -> None:
  devices = jax.device_count()
  if config.batch_size % devices:
    raise ValueError(f'config.batch_size={config.batch_size} must be a multiple of the '
                     f'{devices} devices')
  if config.num_epochs < 1:
    raise ValueError(f'config.num_epochs={config.num_epochs}: expected >= 1')


@dataclasses.dataclass
class Datasets:
  """The splits of a run in host memory, their word table and expert widths."""
  train: input_pipeline.SplitData
  val: input_pipeline.SplitData
  test: input_pipeline.SplitData
  words: np.ndarray  # [V, 300], row 0 the padding vector
  dims: dict[str, tuple[int, str]]


def load_datasets(config, test_only: bool = False) -> Datasets:
  """The run's splits from TFDS; with `test_only` the test split stands for all three."""
  builder = input_pipeline.tfds_builder(config)
  dims = expert_dims(builder)
  spec = model_spec(config, dims)
  table = input_pipeline.WordTable()
  load = lambda split: input_pipeline.load_split(builder, split, config, spec, table)
  start = time.time()
  test = load(config.test_split)
  if test_only:
    return Datasets(test, test, test, table.matrix, dims)
  train = input_pipeline.subset(load(config.train_split), config.train_fraction, config.seed)
  val = test if config.test_split == config.val_split else load(config.val_split)
  logging.info('Loaded %s: %d train, %d val, %d test items, %d distinct words in %.1f s',
               config.tfds_name, len(train), len(val), len(test), len(table.matrix),
               time.time() - start)
  return Datasets(train, val, test, table.matrix, dims)


class Run:
  """Data, model and compiled functions of one experiment."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path,
               data: Datasets | None = None):
    self.config, self.workdir = config, workdir
    data = data or load_datasets(config)
    self.spec = model_spec(config, data.dims)
    dtype = jnp.dtype(config.dtype)
    self.model = RetrievalModel(self.spec, axis_name=AXIS, dtype=dtype)
    self.eval_model = RetrievalModel(self.spec, dtype=dtype)
    self.train, self.val, self.test = data.train, data.val, data.test
    self.word_table = jax_utils.replicate(jnp.asarray(data.words))
    self.devices = jax.local_device_count()
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.train, config.batch_size)
    self.embedder = Embedder(self.eval_model, max(1, config.eval_chunk // self.devices))
    # With data_on_device the training arrays are copied to every device once and each
    # step receives only row indices; otherwise batches are gathered on the host.
    self.device_data = (jax_utils.replicate(input_pipeline.arrays(self.train))
                        if config.data_on_device else None)

  def new_state(self, base_lr: float) -> TrainState:
    c = self.config
    self.schedule = lr_schedule(c, self.steps_per_epoch, base_lr)
    b = c.batch_size // jax.device_count()
    sample = {
        'experts': {e.name: jnp.zeros((b, c.max_tokens[e.name], e.dim) if e.temporal == 'vlad'
                                      else (b, e.dim)) for e in self.spec.experts},
        'availability': jnp.ones((b, len(self.spec.experts))),
        'text': jnp.zeros((b, c.max_tokens['text'], self.spec.text_dim)),
    }
    return create_train_state(jax.random.key(c.seed), self.eval_model,
                              make_optimizer(c, self.schedule), sample)

  def compile_train_step(self):
    """The pmapped step: `step(state, batch) -> (state, metrics)`."""
    step = functools.partial(train_step, model=self.model, loss_config=self.config.loss,
                             schedule=self.schedule)
    if self.device_data is None:
      p_step = jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))
      return lambda state, batch: p_step(state, batch, self.word_table)

    def indexed(state, index, source, table):
      return step(state, input_pipeline.gather(source, index, jnp), table)

    p_step = jax.pmap(indexed, axis_name=AXIS, donate_argnums=(0,))
    return lambda state, index: p_step(state, index, self.device_data, self.word_table)

  def validate(self, variables: dict, data, num_captions: int) -> dict:
    """Metrics of a split; `variables` are replicated {'params', 'batch_stats'}."""
    return evaluate_split(self.embedder, variables, data, num_captions, self.word_table)

  def batches(self, epoch: int):
    """This epoch's batches (or index batches, with data_on_device), on the devices."""
    c = self.config
    make = (input_pipeline.index_batches if self.device_data is not None
            else input_pipeline.train_batches)
    it = make(self.train, epoch, c.seed, c.batch_size, jax.process_count(), jax.process_index())
    return jax_utils.prefetch_to_device(
        (input_pipeline.shard(b, self.devices) for b in it), size=2)


def replicate(tree):
  """`tree` on every local device, laid out as the pmapped step returns its outputs, so
  the step's second call does not recompile for a different input sharding."""
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def _variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _host(state: TrainState) -> dict:
  """Model variables and optimizer state of a replicated state, as host arrays."""
  s = jax.device_get(jax_utils.unreplicate(state))
  return {'model': {'params': s.params, 'batch_stats': s.batch_stats}, 'optimizer': s.opt_state}


def _source_learning_rate(config) -> float:
  """Learning rate a fine-tuning run starts from (REFERENCE §7.18)."""
  if not config.init_optimizer:
    return config.optimizer.learning_rate
  source = pathlib.Path(config.init_from)
  kind = 'latest' if checkpointing.latest_step(source, 'latest') is not None else 'best'
  if checkpointing.latest_step(source, kind) is None:
    raise FileNotFoundError(f'config.init_from={source} holds no checkpoint')
  meta = checkpointing.restore(checkpointing.manager(source, kind), items=('meta',))['meta']
  if 'learning_rate' not in meta:
    raise FileNotFoundError(f'{source} has no optimizer state to resume; set '
                            'config.init_optimizer=False')
  return float(meta['learning_rate'])


def _initialise_from(config, state: TrainState) -> TrainState:
  """Best weights of config.init_from, and its latest optimizer state when asked."""
  source = pathlib.Path(config.init_from)
  best_mngr = checkpointing.manager(source, 'best')
  model = {'params': state.params, 'batch_stats': state.batch_stats}
  best = checkpointing.restore(best_mngr, targets={'model': model})
  state = state.replace(params=best['model']['params'], batch_stats=best['model']['batch_stats'])
  if not config.init_optimizer:
    return state
  if best['meta'].get('optimizer_format') == 'reference_ranger':
    if config.optimizer.name != 'ranger':
      raise ValueError('an imported reference checkpoint holds a Ranger state: fine-tune with '
                       "config.optimizer.name='ranger' or config.init_optimizer=False")
    reference = checkpointing.restore(best_mngr, items=('optimizer',))['optimizer']
    return state.replace(opt_state=with_reference_state(state.opt_state, reference))
  latest_mngr = checkpointing.manager(source, 'latest')
  meta = checkpointing.restore(latest_mngr, items=('meta',))['meta']
  if meta.get('optimizer') != config.optimizer.name:
    raise ValueError(f'{source} was trained with {meta.get("optimizer")}, this run with '
                     f'{config.optimizer.name}: set config.init_optimizer=False')
  restored = checkpointing.restore(latest_mngr, items=('optimizer',),
                                   targets={'optimizer': state.opt_state})['optimizer']
  if config.optimizer.name == 'ranger':
    restored = restart_schedule(restored, state.opt_state)
  return state.replace(opt_state=restored)


def _drop_unfinished_best(best_mngr, epoch: int, workdir: pathlib.Path) -> None:
  """Deletes `best` checkpoints newer than the resumed epoch: a run killed between saving
  `best` and `latest` leaves one, and the epoch it belongs to is trained again."""
  stale = [s for s in best_mngr.all_steps() if s > epoch]
  if stale and epoch == 0 and 'source' in checkpointing.restore(best_mngr, items=('meta',))['meta']:
    raise ValueError(f'{workdir} holds an imported checkpoint (checkpoints/best/), not a '
                     'training run: train in another workdir with --config.init_from='
                     f'{workdir} to start from it, or use --mode=eval to evaluate it')
  for step in stale:
    logging.warning('Removing best checkpoint of epoch %d in %s: written by an interrupted run '
                    'after its last complete epoch %d, which resumes', step, workdir, epoch)
    best_mngr.delete(step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Datasets | None = None) -> dict:
  """Trains (or resumes), selects the best epoch on validation, evaluates it on test.

  `data` replaces the TFDS splits of `config` (benchmarks train on synthetic data).
  """
  workdir = pathlib.Path(workdir)
  _check_config(config)
  run = Run(config, workdir, data)
  input_pipeline.check_required_experts(run.train, run.spec.expert_names, config.flaky)
  latest_mngr = checkpointing.manager(workdir, 'latest')
  best_mngr = checkpointing.manager(workdir, 'best')
  meta = {'epoch': 0, 'step': 0, 'best_score': -1.0, 'best_epoch': None,
          'base_lr': _source_learning_rate(config) if config.init_from
          else config.optimizer.learning_rate}
  if latest_mngr.latest_step() is not None:
    meta = checkpointing.restore(latest_mngr, items=('meta',))['meta']
  _drop_unfinished_best(best_mngr, meta['epoch'], workdir)
  state = run.new_state(meta['base_lr'])
  if meta['epoch'] > 0:
    restored = checkpointing.restore(latest_mngr, items=('model', 'optimizer'), targets={
        'model': {'params': state.params, 'batch_stats': state.batch_stats},
        'optimizer': state.opt_state})
    state = state.replace(params=restored['model']['params'],
                          batch_stats=restored['model']['batch_stats'],
                          opt_state=restored['optimizer'], step=meta['step'])
    logging.info('Resuming %s after epoch %d (step %d)', workdir, meta['epoch'], meta['step'])
  elif config.init_from:
    state = _initialise_from(config, state)

  primary = jax.process_index() == 0
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(str(workdir), just_logging=not primary)
  if meta['epoch'] == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('%s: %s model, experts %s, %s parameters, %d steps/epoch on %d devices',
               workdir, run.spec.variant, list(run.spec.expert_names), f'{num_params:,}',
               run.steps_per_epoch, jax.device_count())

  p_train_step = run.compile_train_step()
  state = replicate(state)
  total_steps = run.steps_per_epoch * config.num_epochs
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  step, started = meta['step'], time.time()
  for epoch in range(meta['epoch'], config.num_epochs):
    history, first = [], step
    for batch in run.batches(epoch):
      state, metrics = p_train_step(state, batch)
      history.append(metrics)
      step += 1
      progress(step)
      if step % config.log_every_steps == 0:
        writer.write_scalars(step, _logged(history, first, epoch, step, total_steps))
        history, first = [], step
    if history:
      writer.write_scalars(step, _logged(history, first, epoch, step, total_steps))
    val = run.validate(_variables(state), run.val, config.val_captions)
    score = val['t2a'][SELECTION_METRIC]
    writer.write_scalars(step, {f'val/{d}_{k}': v for d in ('t2a', 'a2t')
                                for k, v in val[d].items() if k in ('R1', 'R5', 'R10',
                                                                    SELECTION_METRIC)})
    logging.info('epoch %d/%d: val t2a R@1 %.1f R@10 %.1f geom %.2f (best %.2f)', epoch + 1,
                 config.num_epochs, val['t2a']['R1'], val['t2a']['R10'], score,
                 max(score, meta['best_score']))
    host = _host(state)
    lr = float(run.schedule(step))
    meta = dict(meta, epoch=epoch + 1, step=step, learning_rate=lr,
                optimizer=config.optimizer.name, val=val)
    if score >= meta['best_score']:  # ties go to the later epoch (REFERENCE §4.3)
      meta.update(best_score=score, best_epoch=epoch + 1)
      checkpointing.save(best_mngr, epoch + 1, host['model'], dict(meta, val=val))
    checkpointing.save(latest_mngr, epoch + 1, host['model'], meta, host['optimizer'])
  writer.flush()
  return _final_test(run, state, best_mngr, meta, num_params, time.time() - started)


def _final_test(run: Run, state, best_mngr, meta: dict, num_params: int, seconds: float):
  """Test metrics of the best checkpoint, written as results.json and results.md."""
  config = run.config
  target = jax.tree.map(lambda x: x[0], _variables(state))
  best = checkpointing.restore(best_mngr, targets={'model': target})
  test = run.validate(jax_utils.replicate(best['model']), run.test, config.num_test_captions)
  results = results_record(config, run.spec, test, num_params)
  results.update(best_epoch=best['meta']['best_epoch'], epochs_trained=meta['epoch'],
                 val_best=best['meta']['val'], train_seconds=seconds)
  if jax.process_index() == 0:
    write_results(run.workdir, results)
  logging.info('test t2a R@1 %.1f R@10 %.1f | a2t R@1 %.1f R@10 %.1f (%s)',
               test['t2a']['R1'], test['t2a']['R10'], test['a2t']['R1'], test['a2t']['R10'],
               run.workdir / 'results.md')
  return results


def results_record(config, spec: ModelSpec, test: dict, num_params: int) -> dict:
  return {'dataset': config.dataset, 'tfds_name': config.tfds_name,
          'experts': list(spec.expert_names), 'variant': spec.variant, 'seed': config.seed,
          'test_split': config.test_split, 'num_test_captions': config.num_test_captions,
          'num_parameters': int(num_params), 'test': test, 'config': config.to_dict()}


def _logged(history: list[dict], first: int, epoch: int, step: int, total: int) -> dict:
  means = _metrics_finite(history, first + 1)
  logging.info('step %d/%d (epoch %d): loss %.4f lr %.3g', step, total, epoch + 1,
               means['loss'], means['learning_rate'])
  return {f'train/{k}': v for k, v in means.items()}


def _metrics_finite(history: list[dict], first_step: int) -> dict:
  """Means of per-step metrics (fetched now: the only host sync); stops at a NaN/Inf loss."""
  fetched = jax.device_get(history)
  for i, m in enumerate(fetched):
    loss = float(np.ravel(m['loss'])[0])
    if not np.isfinite(loss):
      raise FloatingPointError(
          f'training loss is {loss} at step {first_step + i}; stopped. The last good '
          'checkpoint (end of the previous epoch) is kept in checkpoints/latest.')
  return {k: float(np.mean([np.ravel(m[k])[0] for m in fetched])) for k in fetched[0]}


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Test metrics of a workdir's best checkpoint (a trained run or an imported one)."""
  workdir = pathlib.Path(workdir)
  best_mngr = checkpointing.manager(workdir, 'best')
  if best_mngr.latest_step() is None:
    raise FileNotFoundError(f'{workdir} has no best checkpoint (checkpoints/best/)')
  run = Run(config, workdir, load_datasets(config, test_only=True))
  state = run.new_state(config.optimizer.learning_rate)
  best = checkpointing.restore(best_mngr, targets={
      'model': {'params': state.params, 'batch_stats': state.batch_stats}})
  state = state.replace(params=best['model']['params'], batch_stats=best['model']['batch_stats'])
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  test = run.validate(jax_utils.replicate(_variables(state)), run.test, config.num_test_captions)
  results = results_record(config, run.spec, test, num_params)
  results.update(best_epoch=best['meta'].get('best_epoch', best['meta'].get('epoch')),
                 epochs_trained=best['meta'].get('epoch'), source=best['meta'].get('source'))
  if jax.process_index() == 0:
    write_results(workdir, results)
  return results
