"""Training and evaluation (REFERENCE §4): `train_and_evaluate(config, workdir)`.

The train step (`step.py`) is pmapped over all local devices. Every epoch ends with
validation (first caption only) and one checkpoint carrying its t2a geometric mean (see
`checkpointing`: the newest two and the best are kept); the test split is evaluated with
the best checkpoint at the end. Re-running in the same workdir resumes.

`config.model.variant='mmt'` trains the Multi-Modal Transformer (`models/mmt.py`) through the
same step, checkpoints and writers: its batches come from `input_pipeline.mmt_batches` (BERT
tokens, expert frame tokens), its text tower starts from the pre-trained BERT of
`config.model.bert_dir`, dropout draws a key per step and device, and evaluation embeds every
item and every distinct query once (`MMTEmbedder`). Its recipe tests the last epoch
(`config.model_selection='last_epoch'`: checkpoints are saved without a validation score, so
the newest ranks first) and draws `config.max_samples_per_epoch` samples per epoch.
"""

import dataclasses
import functools
import json
import pathlib
import time

from absl import logging
from clu import metric_writers, periodic_actions
from flax import jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxretrieval import checkpointing, input_pipeline, replicas
from jaxretrieval.bert_tokens import BertTokens
from jaxretrieval.data import splits
from jaxretrieval.embedding import Embedder, MMTEmbedder
from jaxretrieval.evaluation import evaluate_mmt_split, evaluate_split
from jaxretrieval.models import (
  ModelSpec,
  RetrievalModel,
  dummy_inputs,
  mmt,
)
from jaxretrieval.models.spec import model_spec
from jaxretrieval.optim import restart_schedule, with_reference_state
from jaxretrieval.replicas import AXIS
from jaxretrieval.results import results_record, write_results
from jaxretrieval.step import (
  FirstNonFiniteStep,
  Optimisation,
  TrainMetrics,
  TrainState,
  new_train_state,
  optimisation,
  train_step,
)
from jaxretrieval.torch_import import mmt_convert

SELECTION_METRIC = 'geometric_mean_R1-R5-R10'
MODEL_SELECTIONS = ('best_val', 'last_epoch')


def expert_dims(builder) -> dict[str, tuple[int, str]]:
  """Expert widths of a TFDS dataset: name -> (dim, 'vlad' | 'avg')."""
  features = builder.info.features['experts']
  return {e: (f.shape[-1], 'vlad' if len(f.shape) == 2 else 'avg')
          for e, f in features.items()}


def is_mmt(config) -> bool:
  return config.model.variant == 'mmt'


def run_spec(config, dims: dict[str, tuple[int, str]]) -> ModelSpec | mmt.MMTSpec:
  """The architecture of `config` on a dataset with expert widths `dims`."""
  if is_mmt(config):
    return mmt.mmt_spec(config, {e: d for e, (d, _) in dims.items()})
  return model_spec(config, dims)


def bert_tokens(config) -> BertTokens:
  """MMT's tokenizer: `config.model.bert_dir`/vocab.txt, queries cut to max_tokens.text."""
  folder = config.model.bert_dir
  if not folder:
    raise FileNotFoundError(
        'config.model.bert_dir is empty: MMT needs a folder holding bert-base-cased\'s vocab.txt '
        '(and model.safetensors unless config.model.pretrained_text=False); pass '
        '--config.model.bert_dir=DIR (see the README, "MMT")')
  tokens = BertTokens(pathlib.Path(folder).expanduser() / 'vocab.txt', config.max_tokens['text'])
  if tokens.vocab_size > config.model.text_bert.vocab_size:
    raise ValueError(f'{folder}/vocab.txt has {tokens.vocab_size} WordPieces, more than '
                     f'config.model.text_bert.vocab_size={config.model.text_bert.vocab_size}: '
                     'set it to the vocabulary\'s size (28996 for bert-base-cased)')
  return tokens


# Programs are cached per process by what defines them (the model, the optimisation, ...):
# experiments that share them (a resume, a seed sweep, the tests) reuse one traced and
# compiled program instead of tracing and lowering it again.
@functools.lru_cache(maxsize=16)
def _one_instance(model: RetrievalModel | mmt.MMT) -> RetrievalModel | mmt.MMT:
  """The first of the equal models built in this process: a TrainState's `apply_fn` (part of
  its tree structure, compared by identity) is then the same for every run of the model."""
  return model


@functools.lru_cache(maxsize=8)
def _init_program(model: RetrievalModel | mmt.MMT):
  return jax.jit(functools.partial(model.init, train=False))


@functools.lru_cache(maxsize=8)
def _step_program(model: RetrievalModel | mmt.MMT, loss_config: ml_collections.FrozenConfigDict,
                  opt: Optimisation, seed: int, inputs: str):
  """The pmapped `train_step` for batches of `inputs`: 'mmt' (the model's inputs),
  'host' (pipeline batches and the word table) or 'device' (row indices into the training
  arrays on the devices, and the word table)."""
  step = functools.partial(train_step, model=model, loss_config=loss_config,
                           schedule=opt.schedule, update=opt.update, seed=seed)
  if inputs == 'mmt':
    return jax.pmap(lambda state, batch: step(state, batch, None), axis_name=AXIS,
                    donate_argnums=(0,))
  if inputs == 'host':
    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))

  def indexed(state, index, source, table):
    return step(state, input_pipeline.gather(source, index, jnp), table)

  return jax.pmap(indexed, axis_name=AXIS, donate_argnums=(0,))


def _check_config(config) -> None:
  devices = jax.device_count()
  if config.batch_size < 1 or config.batch_size % devices:
    raise ValueError(f'config.batch_size={config.batch_size}: expected a positive multiple of '
                     f'the {devices} devices')
  if config.num_epochs < 1:
    raise ValueError(f'config.num_epochs={config.num_epochs}: expected >= 1')
  samples = config.get('max_samples_per_epoch', 0)
  if samples and samples < config.batch_size:
    raise ValueError(f'config.max_samples_per_epoch={samples}: expected 0 (whole split) or at '
                     f'least config.batch_size={config.batch_size}')
  if config.get('model_selection', 'best_val') not in MODEL_SELECTIONS:
    raise ValueError(f'config.model_selection={config.model_selection!r}: expected one of '
                     f'{MODEL_SELECTIONS}')
  if is_mmt(config) and config.data_on_device:
    raise ValueError('config.data_on_device=True is not available for MMT (its batches are '
                     'built on the host from every frame): set it to False')


@dataclasses.dataclass
class TrainMeta:
  """What a training checkpoint records besides the variables (its `meta` item)."""
  epoch: int = 0  # completed epochs
  step: int = 0  # completed steps
  base_lr: float = 0.0  # the learning rate of epoch 1 (decayed x lr_decay per epoch)
  learning_rate: float | None = None  # the rate of the next epoch: what a fine-tune starts from
  optimizer: str = ''  # config.optimizer.name
  val: dict | None = None  # validation metrics of this epoch
  train_seconds: float = 0.0  # training and validation time of all epochs so far

  @classmethod
  def from_json(cls, meta: dict) -> 'TrainMeta':
    return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})


@dataclasses.dataclass
class ExperimentData:
  """The splits of a run in host memory, their word table and expert widths."""
  train: splits.SplitArrays
  val: splits.SplitArrays
  test: splits.SplitArrays
  words: np.ndarray | None  # [V, 300], row 0 the padding vector; None for MMT (BERT tokens)
  dims: dict[str, tuple[int, str]]


def load_datasets(config, test_only: bool = False) -> ExperimentData:
  """The run's splits from TFDS; with `test_only` the test split stands for all three."""
  builder = splits.tfds_builder(config)
  dims = expert_dims(builder)
  spec = run_spec(config, dims)
  text = bert_tokens(config) if is_mmt(config) else splits.CaptionVocab()
  words = lambda: None if is_mmt(config) else text.matrix
  load = lambda split: splits.load_split(builder, split, config, spec, text)
  start = time.time()
  test = load(config.test_split)
  if test_only:
    return ExperimentData(test, test, test, words(), dims)
  train = splits.subset(load(config.train_split), config.train_fraction, config.seed)
  val = test if config.test_split == config.val_split else load(config.val_split)
  logging.info('Loaded %s: %d train, %d val, %d test items, %s in %.1f s', config.tfds_name,
               len(train), len(val), len(test),
               'BERT tokens' if is_mmt(config) else f'{len(text.matrix)} distinct words',
               time.time() - start)
  return ExperimentData(train, val, test, words(), dims)


class Experiment:
  """Data, model and compiled functions of one experiment."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path,
               data: ExperimentData | None = None):
    self.config, self.workdir = config, workdir
    data = data or load_datasets(config)
    self.spec = run_spec(config, data.dims)
    dtype = jnp.dtype(config.dtype)
    self.mmt = is_mmt(config)
    model_class = mmt.MMT if self.mmt else RetrievalModel
    self.model = _one_instance(model_class(self.spec, axis_name=AXIS, dtype=dtype))
    self.eval_model = _one_instance(model_class(self.spec, dtype=dtype))
    self.train, self.val, self.test = data.train, data.val, data.test
    self.word_table = None if self.mmt else replicas.replicate(data.words)
    self.devices = jax.local_device_count()
    self.steps_per_epoch = input_pipeline.steps_per_epoch(
        self.train, config.batch_size, config.get('max_samples_per_epoch', 0))
    chunk = max(1, config.eval_chunk // self.devices)
    self.embedder = (MMTEmbedder(self.eval_model, chunk, config) if self.mmt
                     else Embedder(self.eval_model, chunk))
    # With data_on_device the training arrays are copied to every device once and each
    # step receives only row indices; otherwise batches are gathered on the host.
    self.device_data = (replicas.replicate(input_pipeline.arrays(self.train))
                        if config.data_on_device else None)

  def optimisation(self, base_lr: float) -> Optimisation:
    return optimisation(ml_collections.FrozenConfigDict(self.config.optimizer),
                        self.steps_per_epoch, base_lr)

  def _init_inputs(self) -> tuple:
    # Shapes of the batch do not change the variables: one small batch, so that every run of
    # a model compiles the same init program.
    batch = mmt.dummy_batch(self.spec) if self.mmt else dummy_inputs(self.spec)
    return jax.random.key(self.config.seed), batch

  def init_variables(self) -> dict:
    """The model's {'params', 'batch_stats'} initialised from config.seed."""
    return dict(_init_program(self.eval_model)(*self._init_inputs()))

  def variable_shapes(self) -> dict:
    """Shapes and dtypes of `init_variables`, to restore a checkpoint into: traced, not
    compiled or run (evaluating or fine-tuning a saved model needs no init program)."""
    return dict(jax.eval_shape(_init_program(self.eval_model), *self._init_inputs()))

  def initial_variables(self) -> dict:
    """The variables a new run starts from: `init_variables`, and for MMT the pre-trained
    text BERT of config.model.bert_dir (the original's `txt_inp = bertftn`) unless
    config.model.pretrained_text is False (a BERT trained from scratch: tests, toy data)."""
    variables = self.init_variables()
    m = self.config.model
    if self.mmt and m.get('pretrained_text', True):
      logging.info('Text tower: the pre-trained BERT of %s', m.bert_dir)
      variables = mmt_convert.with_pretrained_text(variables, m.bert_dir, self.spec)
    return variables

  def new_state(self, base_lr: float, variables: dict | None = None) -> TrainState:
    """A state at step 0 whose optimizer is initialised on `variables` (default: a fresh
    initialisation), as a new reference Ranger copies the weights it first steps from."""
    return new_train_state(self.eval_model.apply, variables or self.init_variables(),
                           self.optimisation(base_lr).tx)

  def step_program(self, base_lr: float):
    """The pmapped `train_step` of this experiment (shared with equal experiments)."""
    inputs = 'mmt' if self.mmt else 'host' if self.device_data is None else 'device'
    return _step_program(self.model, ml_collections.FrozenConfigDict(self.config.loss),
                         self.optimisation(base_lr), self.config.seed, inputs)

  def compile_train_step(self, base_lr: float):
    """The pmapped step: `step(state, batch) -> (state, metrics)`."""
    p_step = self.step_program(base_lr)
    if self.mmt:
      return p_step
    if self.device_data is None:
      return lambda state, batch: p_step(state, batch, self.word_table)
    return lambda state, index: p_step(state, index, self.device_data, self.word_table)

  def validate(self, variables: dict, data, num_captions: int) -> dict:
    """Metrics of a split; `variables` are replicated {'params', 'batch_stats'}."""
    if self.mmt:
      return evaluate_mmt_split(self.embedder, variables, data, num_captions, self.spec)
    return evaluate_split(self.embedder, variables, data, num_captions, self.word_table)

  def batches(self, epoch: int):
    """This epoch's batches (or index batches, with data_on_device), on the devices."""
    c = self.config
    if self.mmt:
      it = input_pipeline.mmt_batches(self.train, epoch, c.seed, c.batch_size, self.spec, c,
                                      jax.process_count(), jax.process_index())
    else:
      make = (input_pipeline.index_batches if self.device_data is not None
              else input_pipeline.train_batches)
      it = make(self.train, epoch, c.seed, c.batch_size, jax.process_count(),
                jax.process_index(), c.get('max_samples_per_epoch', 0))
    return jax_utils.prefetch_to_device(
        (input_pipeline.shard(b, self.devices) for b in it), size=2)


def _variables(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _host(state: TrainState) -> dict:
  """Model variables and optimizer state of a replicated state, as host arrays."""
  s = replicas.first_replica(state)
  return {'model': {'params': s.params, 'batch_stats': s.batch_stats}, 'optimizer': s.opt_state}


def _check_fits(mngr, step: int, template: dict, config) -> None:
  """Refuses a checkpoint whose variables differ from the model's, naming the config fields
  that differ from the checkpoint's run (its workdir's config.json)."""
  saved = checkpointing.model_metadata(mngr, step)
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape)
                         for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  have, want = shapes(saved), shapes(template)
  if have == want:
    return
  diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
  first = diff[0]
  fields = _config_differences(pathlib.Path(mngr.directory).parent, config)
  raise checkpointing.CheckpointError(
      f'{mngr.directory}/{step} holds a different model ({len(diff)} variables differ, e.g. '
      f'{first}: saved {have.get(first)}, configured {want.get(first)})'
      + (f'; config fields changed since it was written: {", ".join(fields)}' if fields else '')
      + ': use the same config, or another workdir for the new model')


def _config_differences(workdir: pathlib.Path, config) -> list[str]:
  """`field (saved -> now)` for each field of WORKDIR/config.json that `config` changes."""
  path = workdir / 'config.json'
  if not path.is_file():
    return []
  saved, now = _flatten(json.loads(path.read_text())), _flatten(config.to_dict())
  return [f'{k} ({saved.get(k)!r} -> {now.get(k)!r})' for k in sorted(saved.keys() | now.keys())
          if str(saved.get(k)) != str(now.get(k))]


def _imported_error(workdir: pathlib.Path) -> checkpointing.CheckpointError:
  return checkpointing.CheckpointError(
      f'{workdir} holds an imported checkpoint, not a training run: train in another '
      f'workdir with --config.init_from={workdir} to start from it, or use --mode=eval '
      'to evaluate it')


def _refuse_imported(workdir: pathlib.Path) -> None:
  """Refuses to train in a workdir whose newest checkpoint is an imported one, before any
  data is loaded (`_resume` refuses it too, for when that checkpoint is unreadable here)."""
  newest = checkpointing.latest_step(workdir)
  if newest is None:
    return
  try:
    meta = checkpointing.restore(checkpointing.manager(workdir), newest, ('meta',))['meta']
  except Exception:  # pylint: disable=broad-except  (unreadable: `_resume` reports it)
    return
  if meta.get('source'):
    raise _imported_error(workdir)


def _resume(run: Experiment, mngr) -> tuple[TrainState, TrainMeta] | None:
  """The state of the newest readable checkpoint of the workdir, None when there is none."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None

  def read(step):
    meta = checkpointing.restore(mngr, step, ('meta',))['meta']
    if meta.get('source'):
      raise _imported_error(run.workdir)
    meta = TrainMeta.from_json(meta)
    shapes = run.variable_shapes()  # restore targets: nothing initialised to be overwritten
    _check_fits(mngr, step, shapes, run.config)
    tx = run.optimisation(meta.base_lr).tx
    restored = checkpointing.restore(mngr, step, ('model', 'optimizer'), {
        'model': shapes, 'optimizer': jax.eval_shape(tx.init, shapes['params'])})
    return meta, new_train_state(run.eval_model.apply, restored['model'], tx,
                                 restored['optimizer'], meta.step)

  step, (meta, state) = checkpointing.restore_first_readable(mngr, steps, read,
                                                             f'resuming {run.workdir}')
  logging.info('Resuming %s after epoch %d (step %d)', run.workdir, meta.epoch, meta.step)
  return state, meta


def _initialise_from(run: Experiment) -> tuple[TrainState, TrainMeta]:
  """Fine-tuning (REFERENCE §4.3, §7.18): the best weights of config.init_from and, with
  config.init_optimizer, the optimizer state and learning rate of its newest checkpoint (the
  reference's `trained_model.pth` likewise pairs the best epoch's weights with the last
  epoch's Ranger state). The optimizer state is always built on the restored weights."""
  config = run.config
  source = pathlib.Path(config.init_from)
  if not checkpointing.checkpoint_dir(source).is_dir():
    raise FileNotFoundError(f'config.init_from={source} holds no checkpoint '
                            f'({checkpointing.checkpoint_dir(source)} is missing)')
  src = checkpointing.manager(source)
  if checkpointing.best_step(src) is None:
    raise FileNotFoundError(f'config.init_from={source} holds no checkpoint '
                            f'({checkpointing.checkpoint_dir(source)} is empty)')
  template = run.variable_shapes()
  best, variables = checkpointing.restore_best_model(
      src, template, f'fine-tuning from {source}',
      check=lambda s: _check_fits(src, s, template, config))
  meta = TrainMeta(base_lr=config.optimizer.learning_rate, optimizer=config.optimizer.name)
  if not config.init_optimizer:
    logging.info('Starting from the weights of %s/%d with a new optimizer', src.directory, best)
    return run.new_state(meta.base_lr, variables), meta
  newest = src.latest_step()
  source_meta = checkpointing.restore(src, newest, ('meta',))['meta']
  if source_meta.get('learning_rate') is None:
    raise checkpointing.CheckpointError(
        f'{src.directory}/{newest} records no learning rate to resume from: set '
        'config.init_optimizer=False to fine-tune with a new optimizer')
  meta.base_lr = float(source_meta['learning_rate'])
  state = run.new_state(meta.base_lr, variables)
  if source_meta.get('optimizer_format') == 'reference_ranger':
    if config.optimizer.name != 'ranger':
      raise checkpointing.CheckpointError(
          f'{source} holds a reference Ranger state: fine-tune with '
          "config.optimizer.name='ranger' or config.init_optimizer=False")
    if not source_meta.get('optimizer_steps'):
      logging.info('%s: the reference Ranger never stepped; a new Ranger starts on its weights '
                   'at lr %g, as the reference would', source, meta.base_lr)
      return state, meta
    reference = checkpointing.restore(src, newest, ('optimizer',))['optimizer']
    return state.replace(opt_state=with_reference_state(state.opt_state, reference)), meta
  if source_meta.get('optimizer') != config.optimizer.name:
    raise checkpointing.CheckpointError(
        f'{source} was trained with {source_meta.get("optimizer")}, this run with '
        f'{config.optimizer.name}: set config.init_optimizer=False')
  restored = checkpointing.restore(src, newest, ('optimizer',),
                                   {'optimizer': state.opt_state})['optimizer']
  if config.optimizer.name == 'ranger':
    restored = restart_schedule(restored, state.opt_state)
  logging.info('Starting from the weights of %s/%d and the optimizer state of epoch %d '
               '(lr %g)', src.directory, best, newest, meta.base_lr)
  return state.replace(opt_state=restored), meta


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: ExperimentData | None = None) -> dict:
  """Trains (or resumes), selects the best epoch on validation, evaluates it on test.

  `data` replaces the TFDS splits of `config` (benchmarks train on synthetic data).
  """
  workdir = pathlib.Path(workdir)
  _check_config(config)
  _refuse_imported(workdir)
  run = Experiment(config, workdir, data)
  splits.check_required_experts(run.train, run.spec.expert_names, config.flaky)
  mngr = checkpointing.manager(workdir)
  resumed = _resume(run, mngr)
  if resumed:
    state, meta = resumed
  elif config.init_from:
    state, meta = _initialise_from(run)
  else:
    meta = TrainMeta(base_lr=config.optimizer.learning_rate, optimizer=config.optimizer.name)
    state = run.new_state(meta.base_lr, run.initial_variables())

  primary = jax.process_index() == 0
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(str(workdir), just_logging=not primary)
  if meta.epoch == 0:
    writer.write_hparams(_flatten(config.to_dict()))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('%s: %s model, experts %s, %s parameters, %d steps/epoch on %d devices',
               workdir, run.spec.variant, list(run.spec.expert_names), f'{num_params:,}',
               run.steps_per_epoch, jax.device_count())

  schedule = run.optimisation(meta.base_lr).schedule
  p_train_step = run.compile_train_step(meta.base_lr)
  state = replicas.replicate(state)
  total_steps = run.steps_per_epoch * config.num_epochs
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  hooks = [progress]
  if primary and config.profile_steps:
    hooks.append(periodic_actions.Profile(logdir=str(workdir),
                                          num_profile_steps=config.profile_steps))
  step = meta.step
  for epoch in range(meta.epoch, config.num_epochs):
    train_metrics, started = None, time.time()
    for batch in run.batches(epoch):
      state, metrics = p_train_step(state, batch)
      train_metrics = metrics if train_metrics is None else train_metrics.merge(metrics)
      step += 1
      for hook in hooks:
        hook(step)
      if step % config.log_every_steps == 0:
        writer.write_scalars(step, _logged(train_metrics, epoch, step, total_steps))
        train_metrics = None
    if train_metrics is not None:
      writer.write_scalars(step, _logged(train_metrics, epoch, step, total_steps))
    with progress.timed('eval'):
      val = run.validate(_variables(state), run.val, config.val_captions)
    score = val['t2a'][SELECTION_METRIC]
    writer.write_scalars(step, {f'val/{d}_{k}': v for d in ('t2a', 'a2t')
                                for k, v in val[d].items() if k in ('R1', 'R5', 'R10',
                                                                    SELECTION_METRIC)})
    logging.info('epoch %d/%d: val t2a R@1 %.1f R@10 %.1f geom %.2f', epoch + 1,
                 config.num_epochs, val['t2a']['R1'], val['t2a']['R10'], score)
    host = _host(state)
    meta = dataclasses.replace(meta, epoch=epoch + 1, step=step,
                               learning_rate=float(schedule(step)), val=val,
                               train_seconds=meta.train_seconds + time.time() - started)
    # 'last_epoch' selection saves no score: the newest checkpoint then ranks first.
    keep_best = config.get('model_selection', 'best_val') == 'best_val'
    checkpointing.save(mngr, epoch + 1, host['model'], dataclasses.asdict(meta),
                       host['optimizer'], score=score if keep_best else None)
  results = test_checkpoint(run, mngr, writer)
  results.update(epochs_trained=meta.epoch, train_seconds=meta.train_seconds)
  if primary:
    write_results(workdir, results)
  writer.flush()
  logging.info('test t2a R@1 %.1f R@10 %.1f | a2t R@1 %.1f R@10 %.1f (%s)',
               results['test']['t2a']['R1'], results['test']['t2a']['R10'],
               results['test']['a2t']['R1'], results['test']['a2t']['R10'],
               workdir / 'results.md')
  return results


def test_checkpoint(run: Experiment, mngr, writer) -> dict:
  """Test metrics of the workdir's best checkpoint (falling back, with a warning, to the
  next best readable one), also written to TensorBoard as `test/...` at its step."""
  config = run.config
  template = run.variable_shapes()
  step, variables = checkpointing.restore_best_model(
      mngr, template, f'testing {run.workdir}',
      check=lambda s: _check_fits(mngr, s, template, config))
  meta = checkpointing.restore(mngr, step, ('meta',))['meta']
  test = run.validate(replicas.replicate(variables), run.test, config.num_test_captions)
  writer.write_scalars(meta.get('step') or step, {
      f'test/{d}_{k}': v for d in ('t2a', 'a2t') for k, v in test[d].items()
      if k in ('R1', 'R5', 'R10', 'MedR', 'MeanR', SELECTION_METRIC)})
  num_params = sum(x.size for x in jax.tree.leaves(variables['params']))
  results = results_record(config, run.spec, test, num_params)
  results.update(checkpoint=f'{mngr.directory}/{step}', best_epoch=step,
                 epochs_trained=mngr.latest_step(), val_best=meta.get('val'),
                 source=meta.get('source'))
  return results


def _logged(train_metrics: TrainMetrics, epoch: int, step: int, total: int) -> dict:
  """The means since the last log (fetched now: the training loop's only host sync), as
  TensorBoard scalars; stops at a NaN/Inf loss. `epoch` (0-based) is the epoch being
  trained: the checkpoints hold the epochs before it."""
  computed = replicas.first_replica(train_metrics).compute()
  # Means rounded to float32, as the device computed them (NumPy divides in float64).
  means = {k: float(np.float32(v)) if np.asarray(v).dtype.kind == 'f' else float(v)
           for k, v in computed.items()}
  bad_step = int(means.pop('first_nonfinite_step'))
  if bad_step != FirstNonFiniteStep.NEVER:
    kept = (f'the checkpoint of epoch {epoch} is kept and a rerun resumes from it' if epoch
            else 'no checkpoint was written (it diverged in the first epoch)')
    raise FloatingPointError(
        f'training loss is {means["loss"]} at step {bad_step} (epoch {epoch + 1}); stopped: '
        f'{kept}. A lower config.optimizer.learning_rate may help.')
  logging.info('step %d/%d (epoch %d): loss %.4f lr %.3g', step, total, epoch + 1,
               means['loss'], means['learning_rate'])
  return {f'train/{k}': v for k, v in means.items()}


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Test metrics of a workdir's best checkpoint (a trained run or an imported one), written
  to `eval_results.{json,md}` and TensorBoard; the training record stays as it is."""
  workdir = pathlib.Path(workdir)
  mngr = (checkpointing.manager(workdir) if checkpointing.checkpoint_dir(workdir).is_dir()
          else None)
  if mngr is None or checkpointing.best_step(mngr) is None:
    raise FileNotFoundError(f'{workdir} has no checkpoint ({checkpointing.checkpoint_dir(workdir)}'
                            ' is empty or missing): train it first, or import one')
  run = Experiment(config, workdir, load_datasets(config, test_only=True))
  writer = metric_writers.create_default_writer(str(workdir),
                                                just_logging=jax.process_index() != 0)
  results = test_checkpoint(run, mngr, writer)
  results.update(data_dir=config.data_dir, evaluated_at=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
  writer.flush()
  if jax.process_index() == 0:
    write_results(workdir, results, name='eval_results')
  return results
