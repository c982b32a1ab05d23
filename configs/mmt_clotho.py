"""MMT (VGGish + VGGSound) on CLOTHO, the recipe of the original `mmt/configs/Clotho_mmt.json`.

Paper (benchmark, original protocol): t2a R@1 6.5, R@10 32.8. Same recipe and arguments as
`configs/mmt_audiocaps.py`; queries are cut to 21 words/tokens and experts to 95 frames.
"""

from configs import mmt_audiocaps


def get_config(arg=None):
  return mmt_audiocaps.experiment('clotho', arg)
