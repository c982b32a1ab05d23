"""Every default of a jaxretrieval experiment, and the per-dataset protocol of the paper.

Experiment files call `experiment(...)` and change only what differs. Values follow
REFERENCE §1.5, §2.1 and §4 (batch 128, Ranger lr 0.01 x0.95 per epoch, wd 1e-3, margin
0.2, 20 epochs). Any field can be overridden on the command line (`--config.seed=1`).
"""

import ml_collections

# Per-dataset protocol (REFERENCE §1.5, §1.6, §4.3). `max_tokens`: truncation/padding
# length per expert and for the text; `flaky`: experts that may be missing in training;
# `num_test_captions`: captions per item at test (each an independent query);
# `fuse_captions`: all captions of an item concatenated into one query.
DATASETS = {
    'audiocaps': dict(
        max_tokens=dict(text=52, vggish=10, vggsound=32, pann=29, syncnet=29),
        flaky=('vggish',), num_test_captions=5, fuse_captions=False,
        val_split='val', test_split='test'),
    'clotho': dict(
        max_tokens=dict(text=21, vggish=31, vggsound=95, pann=29, syncnet=29),
        flaky=(), num_test_captions=5, fuse_captions=False, val_split='val', test_split='test'),
    # ActivityNet: selection and the reported numbers both on val_1 (REFERENCE §7.15).
    'activitynet_captions': dict(
        max_tokens=dict(text=20, vggish=29), flaky=('vggish',), num_test_captions=1,
        fuse_captions=True, val_split='val_1', test_split='val_1'),
    'queryd_segments': dict(
        max_tokens=dict(text=70, vggish=500), flaky=('vggish',), num_test_captions=1,
        fuse_captions=False, val_split='val', test_split='test'),
    'queryd': dict(
        max_tokens=dict(text=70, vggish=500), flaky=('vggish',), num_test_captions=1,
        fuse_captions=True, val_split='val', test_split='test'),
    'sounddescs': dict(
        max_tokens=dict(text=46, vggish=400, vggsound=400, pann=29, syncnet=29), flaky=(),
        num_test_captions=1, fuse_captions=True, val_split='val', test_split='test'),
    # SynthCaps: clips of up to ~5.5 s: 0.96 s log-mel patches, 100 ms spectral frames.
    'synthcaps': dict(
        tfds_name='synthcaps/small', max_tokens=dict(text=32, logmel=6, spectral=56), flaky=(),
        num_test_captions=5, fuse_captions=False, val_split='val', test_split='test'),
}


def get_config() -> ml_collections.ConfigDict:
  """The defaults: CE (VGGish + VGGSound) on CLOTHO with the paper's hyper-parameters."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data.
  c.dataset = 'clotho'  # a key of DATASETS
  c.tfds_name = 'clotho'  # TFDS dataset (and config) to read
  c.data_dir = ''  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
  c.manual_dir = ''  # when set and the dataset is not built yet, build it from this folder
  c.experts = ('vggish', 'vggsound')
  c.train_split = 'train'
  c.train_fraction = 1.0  # a seeded subset of the train split (Fig. 1c)
  c.val_split = 'val'
  c.test_split = 'test'
  c.val_captions = 1  # validation uses the first caption only (REFERENCE §7.14)
  c.num_test_captions = 5
  c.fuse_captions = False
  c.max_tokens = ml_collections.ConfigDict()
  c.flaky = ()
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
  ))
  c.num_epochs = 20
  # Which epoch is tested: 'best_val' (the best validation t2a geometric mean, ties to the
  # later epoch; REFERENCE §4.3) or 'last_epoch' (the original MMT's `monitor: max epoch`).
  c.model_selection = 'best_val'
  c.init_from = ''  # workdir whose best checkpoint initialises training (fine-tuning)
  c.init_optimizer = True  # with init_from: also resume its optimizer state (REFERENCE §7.18)

  # Logging and evaluation.
  c.log_every_steps = 50
  c.eval_chunk = 2048  # items or captions embedded per device call at evaluation
  return c


def with_dataset(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets the dataset and its protocol fields."""
  if name not in DATASETS:
    raise ValueError(f'config.dataset={name!r}: expected one of {sorted(DATASETS)}')
  d = DATASETS[name]
  c.dataset = name
  c.tfds_name = d.get('tfds_name', name)
  c.max_tokens = ml_collections.ConfigDict(d['max_tokens'])
  c.flaky = d['flaky']
  c.num_test_captions = d['num_test_captions']
  c.fuse_captions = d['fuse_captions']
  c.val_split = d['val_split']
  c.test_split = d['test_split']
  return c


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
  c = with_dataset(get_config(), dataset)
  c.model.variant = variant
  c.experts = tuple(a.experts)
  c.seed = a.seed
  c.train_fraction = a.fraction
  return c
