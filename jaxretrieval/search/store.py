"""An audio search index on disk: item embeddings, availability, ids, the text tower.

Layout of an index directory:
  meta.json          spec, expert widths, text token limit, provenance
  embeddings.npy     [N, sum of expert widths] unit-norm expert embeddings side by side;
                     the block of an expert an item lacks is zero
  availability.npy   [N, M] 1 where the item has the expert
  items.json         ids and audio paths ('' when unknown)
  model.msgpack      the model's variables (the text tower encodes queries)
  word_vectors.pkl   the word-vector table of the queries
"""

import dataclasses
import json
import pathlib

from flax import serialization
import numpy as np

from jaxretrieval.models import ExpertSpec, ModelSpec
from jaxretrieval.text import WordVectors


@dataclasses.dataclass
class IndexStore:
  spec: ModelSpec
  text_tokens: int
  embeddings: np.ndarray  # [N, sum d_e]
  availability: np.ndarray  # [N, M]
  ids: list[str]
  audio_paths: list[str]
  variables: dict
  words: WordVectors
  provenance: dict = dataclasses.field(default_factory=dict)

  @property
  def widths(self) -> tuple[int, ...]:
    return self.spec.embed_dims()

  def __len__(self) -> int:
    return len(self.ids)

  def save(self, directory: str | pathlib.Path) -> None:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / 'embeddings.npy', self.embeddings)
    np.save(directory / 'availability.npy', self.availability.astype(np.float32))
    (directory / 'items.json').write_text(json.dumps({'ids': self.ids,
                                                      'audio_paths': self.audio_paths}))
    (directory / 'model.msgpack').write_bytes(serialization.msgpack_serialize(
        serialization.to_state_dict(self.variables)))
    self.words.save(directory / 'word_vectors.pkl')
    spec = dataclasses.asdict(self.spec)
    (directory / 'meta.json').write_text(json.dumps(
        {'spec': spec, 'text_tokens': self.text_tokens, 'num_items': len(self),
         'provenance': self.provenance}, indent=2))

  @classmethod
  def load(cls, directory: str | pathlib.Path) -> 'IndexStore':
    directory = pathlib.Path(directory)
    missing = [f for f in ('meta.json', 'embeddings.npy', 'availability.npy', 'items.json',
                           'model.msgpack', 'word_vectors.pkl') if not (directory / f).is_file()]
    if missing:
      raise FileNotFoundError(f'{directory} is not a search index (missing {missing}); build '
                              'one with `python -m jaxretrieval.index`')
    meta = json.loads((directory / 'meta.json').read_text())
    spec = dict(meta['spec'])
    spec['experts'] = tuple(ExpertSpec(**e) for e in spec['experts'])
    items = json.loads((directory / 'items.json').read_text())
    variables = serialization.msgpack_restore((directory / 'model.msgpack').read_bytes())
    return cls(spec=ModelSpec(**spec), text_tokens=meta['text_tokens'],
               embeddings=np.load(directory / 'embeddings.npy', mmap_mode='r'),
               availability=np.load(directory / 'availability.npy'), ids=items['ids'],
               audio_paths=items['audio_paths'], variables=variables,
               words=WordVectors.load(directory / 'word_vectors.pkl'),
               provenance=meta.get('provenance', {}))
