r"""Searches an index from the command line.

  python -m jaxretrieval.search.query --index INDEX "a high beep followed by hiss" -k 10
"""

import dataclasses
import json
import sys

from absl import app, flags

from jaxretrieval.search.engine import QueryError, SearchEngine
from jaxretrieval.search.store import IndexFileError, IndexStore


def format_result(result) -> str:
  lines = [f'query: {" ".join(result.tokens)}']
  if result.substitutions:
    lines.append('read as: ' + ', '.join(f'{a} -> {b}' for a, b in result.substitutions.items()))
  if result.unknown:
    lines.append(f'unknown words (ignored): {", ".join(result.unknown)}')
  lines.append('expert weights: ' + ', '.join(f'{e} {w:.2f}' for e, w in result.weights.items()))
  for hit in result.hits:
    detail = ' | '.join(f'{e} w={hit.weights[e]:.2f} cos={c:.3f}' if c is not None
                        else f'{e} missing' for e, c in hit.cosines.items())
    where = f'  {hit.path}' if hit.path else ''
    seconds = f'  {hit.duration:.1f} s' if hit.duration is not None else ''
    caption = f'  "{hit.captions[0]}"' if hit.captions else ''
    lines.append(f'{hit.rank:3d}  {hit.score:.4f}  {hit.id}{where}{seconds}{caption}  [{detail}]')
    lines += [f'{"":13}"{c}"' for c in hit.captions[1:]]  # the item's other captions
  return '\n'.join(lines)


def main(argv):
  query = ' '.join(argv[1:])
  try:
    engine = SearchEngine(IndexStore.load(flags.FLAGS.index))
  except (FileNotFoundError, IndexFileError) as e:
    print(f'cannot load the index: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    result = engine.search(query, flags.FLAGS.k)
  except QueryError as e:
    print(f'cannot search: {e}', file=sys.stderr)
    sys.exit(2)
  if flags.FLAGS.json:
    print(json.dumps(dataclasses.asdict(result), indent=2))
  else:
    print(format_result(result))


if __name__ == '__main__':
  flags.DEFINE_string('index', None, 'index directory (python -m jaxretrieval.search.index)',
                      required=True)
  flags.DEFINE_integer('k', 10, 'number of results', lower_bound=1)
  flags.DEFINE_bool('json', False, 'print JSON')
  app.run(main)
