"""BERT WordPiece tokens of captions, as the original MMT feeds its text tower.

The original (`mmt/base/base_dataset.py`, `tokenize_caption`) builds each query as:
words cut to `max_tokens` words -> joined by spaces -> a period appended unless it ends in
. ? ! -> `str.capitalize()` -> Hugging Face `BertTokenizer('bert-base-cased', do_lower_case=True)`:
lower-cased and accents stripped although the vocabulary is cased -> `[CLS] ... [SEP]` -> cut
to `max_tokens` tokens with the last one forced to `[SEP]` -> zero-padded ([PAD] = 0) with a
0/1 mask. The same normalisation and WordPiece run here through the `tokenizers` package,
from the checkpoint's `vocab.txt`; nothing is downloaded.

With `query_shuffling: cat` (the original configs, `fuse=True` here) a query is all of an
item's captions' words concatenated in order, then cut as above.
"""

import pathlib
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]')


class BertTokens:
  """Captions -> `[N, max_tokens]` token ids and masks for MMT's text tower."""

  def __init__(self, vocab_path: str | pathlib.Path, max_tokens: int, lowercase: bool = True):
    """Args:
      vocab_path: the BERT `vocab.txt` (one WordPiece per line, id = line number).
      max_tokens: the original's `max_text_words` (52 AudioCaps, 21 CLOTHO), both the word
        cut and the token cut, [CLS] and [SEP] included.
      lowercase: lower-case and strip accents (the original: True on the cased vocabulary).
    """
    path = pathlib.Path(vocab_path)
    if not path.is_file():
      raise FileNotFoundError(f'no BERT vocabulary at {path}: use the vocab.txt of '
                              'bert-base-cased (see the README, "MMT")')
    vocab = {w: i for i, w in enumerate(path.read_text(encoding='utf-8').splitlines())}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise ValueError(f'{path}: the vocabulary lacks {missing}; is it a BERT vocab.txt?')
    if vocab['[PAD]'] != 0:
      raise ValueError(f'{path}: [PAD] has id {vocab["[PAD]"]}; padding uses id 0 as in BERT')
    if max_tokens < 2:
      raise ValueError(f'max_tokens={max_tokens}: a query needs room for [CLS] and [SEP]')
    self.max_tokens = max_tokens
    self.cls_id, self.sep_id = vocab['[CLS]'], vocab['[SEP]']
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token='[UNK]',
                                           max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
        lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    self._tokenizer = tokenizer

  def query_text(self, words: Sequence[str]) -> str:
    """The string the original tokenises for a list of words."""
    text = ' '.join(words[:self.max_tokens]).strip()
    if not text:
      text = '.'  # the original stops in a debugger on an empty caption; a period is a query
    if text[-1] not in '.?!':
      text += '.'
    return text.capitalize()

  def encode(self, queries: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Word lists -> (`[N, max_tokens]` int32 ids, `[N, max_tokens]` int32 mask)."""
    encoded = self._tokenizer.encode_batch([self.query_text(q) for q in queries],
                                           add_special_tokens=False)
    ids = np.zeros((len(queries), self.max_tokens), np.int32)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encoded):
      tokens = ([self.cls_id] + e.ids + [self.sep_id])[:self.max_tokens]
      tokens[-1] = self.sep_id
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return ids, mask

  @staticmethod
  def queries(captions: Sequence[str], fuse: bool = False) -> list[list[str]]:
    """Caption strings of one item -> the word lists of its queries: one per caption, or
    one of all their words in order (`fuse`, the original's `query_shuffling: cat`)."""
    words = [c.split() for c in captions]
    if fuse:
      words = [[w for caption in words for w in caption]]
    return words

  def encode_captions(self, captions: Sequence[str], fuse: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Caption strings of one item -> one query per caption, or one query (`fuse`)."""
    return self.encode(self.queries(captions, fuse))

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size()
