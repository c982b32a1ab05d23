"""A small web page over a search index (standard library HTTP server).

  GET /                      the search page
  GET /api/search?q=..&k=..  JSON results (400 with {"error": ...} for a bad request)
  GET /audio/<row>           the audio file of an indexed item, when it exists
"""

import http.server
import json
import mimetypes
import pathlib
import threading
import urllib.parse

from jaxretrieval.search.engine import MAX_QUERY_CHARS, QueryError, SearchEngine

MAX_K = 100
PAGE = (pathlib.Path(__file__).parent / 'page.html').read_text()


class BadRequest(ValueError):
  pass


def parse_query(query_string: str) -> tuple[str, int]:
  """(q, k) from a query string; BadRequest names what is wrong."""
  try:
    params = urllib.parse.parse_qs(query_string, keep_blank_values=True, strict_parsing=True,
                                   max_num_fields=4)
  except ValueError as e:
    raise BadRequest(f'malformed parameters: {e}') from e
  unknown = set(params) - {'q', 'k'}
  if unknown:
    raise BadRequest(f'unknown parameter(s) {sorted(unknown)}; expected q and k')
  if any(len(v) > 1 for v in params.values()):
    raise BadRequest('each parameter may be given once')
  if 'q' not in params:
    raise BadRequest('missing parameter q (the query)')
  q = params['q'][0]
  if len(q) > MAX_QUERY_CHARS:
    raise BadRequest(f'query of {len(q)} characters; at most {MAX_QUERY_CHARS}')
  k = params.get('k', ['10'])[0]
  if not k.isdigit() or not 1 <= int(k) <= MAX_K:
    raise BadRequest(f'k={k!r}: expected an integer from 1 to {MAX_K}')
  return q, int(k)


def result_json(result) -> dict:
  return {
      'query': result.query, 'tokens': result.tokens, 'unknown': result.unknown,
      'weights': result.weights,
      'results': [{'rank': h.rank, 'id': h.id, 'score': h.score, 'experts': h.experts,
                   'audio': f'/audio/{h.row}' if h.audio_path and pathlib.Path(
                       h.audio_path).is_file() else None} for h in result.hits],
  }


def make_handler(engine: SearchEngine):
  lock = threading.Lock()

  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = 'jaxretrieval'

    def _send(self, status: int, body: bytes, content_type: str) -> None:
      self.send_response(status)
      self.send_header('Content-Type', content_type)
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
      self._send(status, json.dumps(payload).encode(), 'application/json')

    def do_GET(self):  # pylint: disable=invalid-name
      url = urllib.parse.urlsplit(self.path)
      try:
        if url.path == '/':
          self._send(200, PAGE.encode(), 'text/html; charset=utf-8')
        elif url.path == '/api/search':
          q, k = parse_query(url.query)
          with lock:
            result = engine.search(q, k)
          self._json(200, result_json(result))
        elif url.path.startswith('/audio/'):
          self._audio(url.path[len('/audio/'):])
        else:
          self._json(404, {'error': f'no page {url.path}'})
      except (BadRequest, QueryError) as e:
        self._json(400, {'error': str(e)})

    def _audio(self, row: str) -> None:
      store = engine.store
      if not row.isdigit() or int(row) >= len(store):
        self._json(404, {'error': f'no item {row!r}'})
        return
      path = pathlib.Path(store.audio_paths[int(row)])
      if not store.audio_paths[int(row)] or not path.is_file():
        self._json(404, {'error': f'item {store.ids[int(row)]} has no audio file'})
        return
      kind = mimetypes.guess_type(path.name)[0] or 'application/octet-stream'
      self._send(200, path.read_bytes(), kind)

    def do_POST(self):  # pylint: disable=invalid-name
      self._json(405, {'error': 'only GET is supported'})

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      pass  # quiet: one line per request would flood the console

  return Handler


def make_server(engine: SearchEngine, host: str = '127.0.0.1',
                port: int = 8000) -> http.server.ThreadingHTTPServer:
  return http.server.ThreadingHTTPServer((host, port), make_handler(engine))
