"""MMT (VGGish + VGGSound) on AudioCaps: the original recipe, `mmt/configs/AudioCaps_mmt.json`.

Paper (benchmark README, original protocol): t2a R@1 36.1, R@10 84.5, 127.08M parameters.

  python launch.py --config configs/mmt_audiocaps.py --config.model.bert_dir=~/bert-base-cased
  python launch.py --config configs/mmt_audiocaps.py:protocol=original ...

`protocol=per_caption` (default): the paper's CE/MoEE protocol, each caption an independent
query (5 per test item). `protocol=original`: the original MMT's `query_shuffling: cat`, one
query per item made of ALL its captions concatenated and cut to `max_tokens.text` words, in
training, validation and test alike; this is how the published MMT numbers were obtained, and
they are not comparable with per-caption numbers. Arguments: `seed`, `protocol`, `experts`.
"""

import ml_collections

from configs import common
from jaxretrieval.data import registry

# max_text_words, max_expert_tokens of the original configs; other datasets keep the token
# limits of `common.DATASETS`.
TOKENS = {'audiocaps': (52, 32), 'clotho': (21, 95)}
PROTOCOLS = ('per_caption', 'original')


def experiment(dataset: str, arg: str | None = None,
               experts: tuple[str, ...] = ('vggish', 'vggsound')) -> ml_collections.ConfigDict:
  """The original MMT recipe on `dataset` ('audiocaps', 'clotho', or any of common.DATASETS)."""
  a = common.parse_arg(arg, experts=experts, seed=0, protocol='per_caption')
  if a.protocol not in PROTOCOLS:
    raise ValueError(f'protocol={a.protocol!r}: expected one of {PROTOCOLS}')
  c = registry.configure(common.get_config(), dataset)
  c.seed = a.seed
  c.experts = tuple(a.experts)
  if dataset in TOKENS:
    text_tokens, expert_tokens = TOKENS[dataset]
    c.max_tokens = ml_collections.ConfigDict(
        {'text': text_tokens, **{e: expert_tokens for e in c.experts}})
  if a.protocol == 'original':
    c.fuse_captions = True  # every split: one query of all captions, cut to text_tokens words
    c.num_test_captions = 1
  c.batch_size = 32
  c.num_epochs = 50
  c.max_samples_per_epoch = 32_000  # an epoch is 32,000 / 32 = 1,000 batches drawn with replacement
  c.model_selection = 'last_epoch'  # the original monitors "max epoch": the last one is kept
  c.model = ml_collections.ConfigDict(dict(
      variant='mmt',
      # Folder holding bert-base-cased's vocab.txt and model.safetensors (or a zip-serialised
      # pytorch_model.bin); see the README, "MMT". Required for training and evaluation.
      bert_dir='',
      # True: a new run's text tower starts from bert_dir's weights (the original). False: from
      # a random initialisation, only vocab.txt is read (tiny models, toy data, tests).
      pretrained_text=True,
      # The text tower: bert-base-cased's sizes (its config.json).
      text_bert=ml_collections.ConfigDict(dict(
          vocab_size=28996, hidden_size=768, num_layers=12, num_heads=12,
          intermediate_size=3072, max_positions=512, type_vocab_size=2)),
      same_dim=512,  # the audio transformer's width and every joint embedding's
      audio_layers=4,
      audio_heads=4,
      audio_intermediate=3072,
      audio_max_positions=102,
      audio_type_vocab=10,
      dropout=0.1,  # hidden and attention dropout of both transformers, and before the weights
      keep_missing_modalities=True,  # a missing expert still counts in the similarity
      frame_width=1.0,  # seconds per VGGish / VGGSound frame (positions: frame k -> k + 2)
  ))
  c.loss.margin = 0.05
  c.loss.fix_norm = True
  # torch Adam (weight_decay 0) == AdamW with weight decay 0; StepLR(step 1, gamma 0.9).
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 5e-5
  c.optimizer.weight_decay = 0.0
  c.optimizer.lr_decay = 0.9
  return c


def get_config(arg=None):
  return experiment('audiocaps', arg)
