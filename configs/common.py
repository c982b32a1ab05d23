"""Every default of a jaxretrieval experiment.

Experiment files call `experiment(...)` and change only what differs. Values follow
REFERENCE §1.5, §2.1 and §4 (batch 128, Ranger lr 0.01 x0.95 per epoch, wd 1e-3, margin
0.2, 20 epochs); a dataset's protocol (token limits, flaky experts, test captions, caption
fusing, splits) comes from `jaxretrieval.data.registry.DATASETS`. Any field can be
overridden on the command line (`--config.seed=1`).
"""

import ml_collections

from jaxretrieval.data import registry


def get_config() -> ml_collections.ConfigDict:
  """The defaults: CE (VGGish + VGGSound) on CLOTHO with the paper's hyper-parameters."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data. `registry.configure` below sets the dataset's protocol: tfds_name, val_split,
  # test_split, max_tokens, flaky, num_test_captions, fuse_captions.
  c.dataset = 'clotho'  # a key of registry.DATASETS
  c.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
  c.manual_dir = ''  # when set and the dataset is not built yet, build it from this folder
  c.experts = ('vggish', 'vggsound')
  c.train_split = 'train'
  c.train_fraction = 1.0  # a seeded subset of the train split (Fig. 1c)
  c.val_captions = 1  # validation uses the first caption only (REFERENCE §7.14)
  c.batch_size = 128  # global, over all devices and hosts
  # 0: an epoch is one pass over a permutation of the training items (the paper's CE/MoEE).
  # n > 0: an epoch is n // batch_size full batches of items drawn with replacement (the
  # original MMT trainer: a shuffled dataset of length 1e7 read modulo the split size).
  c.max_samples_per_epoch = 0
  c.data_on_device = False  # keep the whole training set in device memory

  # Model (REFERENCE §2).
  c.model = ml_collections.ConfigDict(dict(
      variant='ce',  # 'ce' or 'moee'; 'ce' with one expert is the paper's single-expert CE
      vlad_clusters=16,
      text_clusters=20,
      text_ghost_clusters=1,
      shared_dim=768,
      use_mask=False,  # NetVLAD ignores padding tokens (improvement; off = reference)
  ))
  c.dtype = 'float32'  # compute dtype: float32 or bfloat16

  # Loss (REFERENCE §4.1).
  c.loss = ml_collections.ConfigDict(dict(
      name='max_margin',  # 'max_margin' or 'infonce'
      margin=0.2,
      fix_norm=True,
      temperature=0.07,  # infonce: initial temperature (learned)
  ))

  # Optimisation (REFERENCE §4.2-4.3).
  c.optimizer = ml_collections.ConfigDict(dict(
      name='ranger',  # 'ranger' or 'adamw'
      learning_rate=0.01,
      weight_decay=1e-3,
      lr_decay=0.95,  # per epoch, after validation
      # ranger: True computes each parameter's moments and new value in one fused pass
      # (optim.ranger_apply: the same arithmetic and state; 3-8% faster steps on CPU,
      # benchmarks/RESULTS.md); False: optax's chain and apply_gradients.
      fused=True,
  ))
  c.num_epochs = 20
  # Which epoch is tested: 'best_val' (the best validation t2a geometric mean, ties to the
  # later epoch; REFERENCE §4.3) or 'last_epoch' (the original MMT's `monitor: max epoch`).
  c.model_selection = 'best_val'
  c.init_from = ''  # workdir whose best checkpoint initialises training (fine-tuning)
  c.init_optimizer = True  # with init_from: also resume its optimizer state (REFERENCE §7.18)

  # Logging and evaluation.
  c.log_every_steps = 50
  c.profile_steps = 0  # > 0: a jax.profiler trace of that many steps in the workdir (step 10)
  c.eval_chunk = 2048  # items or captions embedded per device call at evaluation
  return registry.configure(c, c.dataset)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument `k1=v1,k2=v2`, typed like the defaults.

  A list takes several values: `experts=scene,vggish` (a comma item without `=` continues
  the list before it) or `experts=scene+vggish`. Unknown keys are an error naming the known.
  """
  values = dict(defaults)
  last = None
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      if last is None or not isinstance(defaults[last], tuple):
        raise ValueError(f'config argument {arg!r}: {item!r} is not key=value')
      values[last] += (item,)
      continue
    if key not in defaults:
      raise ValueError(f'config argument {item!r}: unknown key {key!r}, expected one of '
                       f'{sorted(defaults)}')
    default, last = defaults[key], key
    if isinstance(default, tuple):
      values[key] = tuple(v for v in value.split('+') if v)
    elif isinstance(default, bool):
      values[key] = value.lower() in ('1', 'true', 'yes')
    else:
      values[key] = type(default)(value)
  return ml_collections.ConfigDict(values)


def experiment(dataset: str, variant: str, experts: tuple[str, ...],
               arg: str | None = None) -> ml_collections.ConfigDict:
  """A paper experiment; `arg` may override `experts`, `seed` and `fraction`."""
  a = parse_arg(arg, experts=tuple(experts), seed=0, fraction=1.0)
  c = registry.configure(get_config(), dataset)
  c.model.variant = variant
  c.experts = tuple(a.experts)
  c.seed = a.seed
  c.train_fraction = a.fraction
  return c
