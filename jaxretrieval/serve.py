r"""Serves a search page over an index: `python -m jaxretrieval.serve --index INDEX`.

Binds 127.0.0.1:8000 by default; open http://127.0.0.1:8000/ in a browser. What the server
serves and guarantees is in `jaxretrieval/search/server.py`.
"""

import logging

from absl import app
from absl import flags

from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.server import SearchServer
from jaxretrieval.search.store import IndexStore


def main(argv):
  del argv
  f = flags.FLAGS
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  engine = SearchEngine(IndexStore.load(f.index))
  print(f'compiling the query path for {len(engine.store)} items…', flush=True)
  server = SearchServer(engine, f.host, f.port)
  host, port = server.address
  host = f'[{host}]' if ':' in host else host
  print(f'serving {len(engine.store)} items on http://{host}:{port}/ (Ctrl-C stops)', flush=True)
  server.serve_forever()


if __name__ == '__main__':
  flags.DEFINE_string('index', None, 'index directory (python -m jaxretrieval.index)',
                      required=True)
  flags.DEFINE_string('host', '127.0.0.1', 'address to bind (0.0.0.0 exposes it to the network)')
  flags.DEFINE_integer('port', 8000, 'port (0: any free port)')
  app.run(main)
