"""MMT on SynthCaps (log-mel + spectral experts), the original recipe otherwise.

  python launch.py --config configs/mmt_synthcaps.py --config.model.bert_dir=~/bert-base-cased

SynthCaps ships no BERT: pass bert-base-cased's folder (see the README, "MMT"). Arguments as
`configs/mmt_audiocaps.py` (`seed`, `protocol`, `experts`).
"""

from configs import mmt_audiocaps


def get_config(arg=None):
  return mmt_audiocaps.experiment('synthcaps', arg, experts=('logmel', 'spectral'))
