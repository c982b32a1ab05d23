r"""Serves a search page over an index: `python -m jaxretrieval.search.serve --index INDEX`.

Binds 127.0.0.1:8000 by default; open http://127.0.0.1:8000/ in a browser. What the server
serves and guarantees is in `jaxretrieval/search/server.py`.
"""

import logging
import sys

from absl import app, flags

from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.server import SearchServer
from jaxretrieval.search.store import IndexFileError, IndexStore


def main(argv):
  del argv
  f = flags.FLAGS
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  try:
    engine = SearchEngine(IndexStore.load(f.index))
  except (FileNotFoundError, IndexFileError) as e:
    sys.exit(f'cannot load the index: {e}')
  print(f'compiling the query path for {len(engine.store)} items…', flush=True)
  try:
    server = SearchServer(engine, f.host, f.port)
  except OSError as e:
    sys.exit(f'cannot listen on {f.host}:{f.port} ({e}); pick another --port')
  host, port = server.address
  host = f'[{host}]' if ':' in host else host
  print(f'serving {len(engine.store)} items on http://{host}:{port}/ (Ctrl-C stops)', flush=True)
  server.serve_forever()


if __name__ == '__main__':
  flags.DEFINE_string('index', None, 'index directory (python -m jaxretrieval.search.index)',
                      required=True)
  flags.DEFINE_string('host', '127.0.0.1', 'address to bind (0.0.0.0 exposes it to the network)')
  flags.DEFINE_integer('port', 8000, 'port (0: any free port)')
  app.run(main)
