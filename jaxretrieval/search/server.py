"""The search page over an index, served with Starlette on uvicorn.

  GET /?q=..&k=..            the search page (the query lives in the URL: links, reloads and
                             the back button work)
  GET /api/info              what is indexed: name, item count, model, experts, example queries
  GET /api/search?q=..&k=..  JSON results (400 with {"error": ...} for a bad request)
  GET /audio/<row>           the audio file of an indexed item (Range requests answer 206)
  GET /thumbnails/<row>      the PNG spectrogram thumbnail of an indexed item

What it guarantees:
* Only the page, search results and the audio files and thumbnails of indexed items are
  served: an audio file only when, with symlinks resolved, it lies inside a collection root
  recorded when the index was built; a thumbnail only from the index's own thumbnail files,
  by row (no path is ever read from the request).
* Bound to a loopback address (the default), it answers only requests whose Host header
  is 127.0.0.1, localhost or [::1] (with any port), so a web page cannot reach it through
  DNS rebinding.
* Every request is answered: numbers are parsed strictly (ASCII digits, bounded length),
  bad requests get a 4xx JSON error, and any unexpected failure a 500 (its traceback goes
  to the log). One log line per request: method, path, status, milliseconds.
* The query path is compiled for every k before the socket opens, and uvicorn's backlog
  holds bursts of clients.
"""

import ipaddress
import logging
import mimetypes
import pathlib
import socket
import threading
import time
import urllib.parse

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
import uvicorn

from jaxretrieval.search.engine import MAX_QUERY_CHARS, QueryError, SearchEngine

MAX_K = 100
MAX_ROW_DIGITS = 12  # rows are below 10**12; longer numbers are refused before int()
BACKLOG = 2048
LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '[::1]')
PAGE = (pathlib.Path(__file__).parent / 'page.html').read_text()

log = logging.getLogger(__name__)


class BadRequest(ValueError):
  pass


class NoItem(LookupError):
  """A path naming no indexed item (answered 404)."""


def parse_number(text: str, max_digits: int) -> int | None:
  """The integer written in 1 to `max_digits` ASCII digits, else None.

  Never `int()` of anything else: '²'.isdigit() is True and int() refuses it, and 5,000
  digits exceed Python's int-digit limit.
  """
  if text.isascii() and text.isdigit() and len(text) <= max_digits:
    return int(text)
  return None


def parse_query(query_string: str) -> tuple[str, int]:
  """(q, k) from a query string; BadRequest names what is wrong."""
  try:
    params = urllib.parse.parse_qs(query_string, keep_blank_values=True, strict_parsing=True,
                                   max_num_fields=4, errors='strict')
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
  k_value = parse_number(k, len(str(MAX_K)))
  if k_value is None or not 1 <= k_value <= MAX_K:
    raise BadRequest(f'k={k[:20]!r}: expected an integer from 1 to {MAX_K}')
  return q, k_value


def result_json(result, store) -> dict:
  """The JSON of a search: the query as read, its expert weights, and the ranked items with
  what a person recognises (captions, file name, duration) and per-expert cosines."""
  return {
      'query': result.query, 'tokens': result.tokens, 'unknown': result.unknown,
      'substitutions': result.substitutions, 'weights': result.weights,
      'results': [{'rank': h.rank, 'id': h.id, 'score': h.score, 'cosines': h.cosines,
                   'weights': h.weights, 'captions': h.captions, 'duration': h.duration,
                   'name': pathlib.PurePath(h.path).name if h.path else h.id,
                   'audio': f'/audio/{h.row}' if store.audio_file(h.row) else None,
                   'thumbnail': f'/thumbnails/{h.row}' if store.thumbnail(h.row) else None}
                  for h in result.hits],
  }


def make_app(engine: SearchEngine, check_host: bool = True) -> Starlette:
  """The ASGI app; `check_host` admits only loopback Host headers."""
  lock = threading.Lock()  # one query at a time on the device
  store = engine.store
  description = engine.describe()

  def page(request: Request) -> HTMLResponse:
    del request
    return HTMLResponse(PAGE)

  def search(request: Request) -> JSONResponse:
    q, k = parse_query(request.scope['query_string'].decode('latin-1'))
    with lock:
      result = engine.search(q, k)
    return JSONResponse(result_json(result, store))

  def info(request: Request) -> JSONResponse:
    del request
    return JSONResponse(description)

  def item_row(request: Request) -> int:
    """The row named by the path, strictly parsed; 404 unless it is an indexed item."""
    text = request.path_params['row']
    row = parse_number(text, MAX_ROW_DIGITS)
    if row is None or row >= len(store):
      raise NoItem(f'no item {text[:20]!r}')
    return row

  def audio(request: Request) -> FileResponse | JSONResponse:
    row = item_row(request)
    path = store.audio_file(row)
    if path is None:
      return JSONResponse({'error': f'item {store.ids[row]} has no audio file here'}, 404)
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0]
                        or 'application/octet-stream')

  def thumbnail(request: Request) -> Response:
    row = item_row(request)
    png = store.thumbnail(row)
    if not png:
      return JSONResponse({'error': f'item {store.ids[row]} has no thumbnail'}, 404)
    return Response(png, media_type='image/png')

  async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    del request
    return JSONResponse({'error': str(exc)}, 400)

  async def no_item(request: Request, exc: Exception) -> JSONResponse:
    del request
    return JSONResponse({'error': str(exc)}, 404)

  async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    detail = f'no page {request.url.path[:80]}' if exc.status_code == 404 else exc.detail
    return JSONResponse({'error': detail}, exc.status_code, headers=exc.headers)

  middleware = [Middleware(RequestLog)]
  if check_host:
    middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS),
                                 www_redirect=False))
  return Starlette(
      routes=[Route('/', page), Route('/api/search', search), Route('/api/info', info),
              Route('/audio/{row:path}', audio), Route('/thumbnails/{row:path}', thumbnail)],
      middleware=middleware,
      exception_handlers={BadRequest: bad_request, QueryError: bad_request, NoItem: no_item,
                          HTTPException: http_error})


class RequestLog:
  """ASGI middleware: one log line per request (method, path, status, milliseconds); an
  unexpected exception is logged with its traceback and answered 500."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      await self.app(scope, receive, send)
      return
    start, status, logged = time.perf_counter(), [None], [False]
    path = scope.get('raw_path', b'').decode('ascii', 'backslashreplace')[:200]

    def log_line():
      logged[0] = True
      log.info('%s %s %s %.1f ms', scope['method'], path, status[0] or 'dropped',
               1000 * (time.perf_counter() - start))

    async def send_and_note(message):
      if message['type'] == 'http.response.start':
        status[0] = message['status']
      if message['type'] == 'http.response.body' and not message.get('more_body', False):
        log_line()  # before the last byte leaves, so the line precedes the client's next step
      await send(message)

    try:
      await self.app(scope, receive, send_and_note)
    except Exception as e:  # pylint: disable=broad-except  (every request gets an answer)
      log.exception('%s %s failed', scope['method'], path)
      if status[0] is None:  # nothing sent yet: answer 500
        await JSONResponse({'error': f'internal error ({type(e).__name__}); see the server '
                                     'log'}, 500)(scope, receive, send_and_note)
    if not logged[0]:
      log_line()


def is_loopback(host: str) -> bool:
  try:
    return host == 'localhost' or ipaddress.ip_address(host.strip('[]')).is_loopback
  except ValueError:
    return False


class SearchServer:
  """uvicorn serving the search app on a socket bound at construction (port 0: any free).

  The query path is compiled before the socket opens, so the first user does not wait.
  """

  def __init__(self, engine: SearchEngine, host: str = '127.0.0.1', port: int = 8000):
    engine.warm_up(MAX_K)
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    self.socket = socket.create_server((host.strip('[]'), port), family=family,
                                       backlog=BACKLOG)
    self.address = self.socket.getsockname()[:2]
    app = make_app(engine, check_host=is_loopback(host))
    logging.getLogger('uvicorn.access').disabled = True  # RequestLog writes one line instead
    self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                                 backlog=BACKLOG, lifespan='off'))

  def serve_forever(self) -> None:
    """Serves until `shutdown` (or Ctrl-C when run in the main thread)."""
    try:
      self._server.run(sockets=[self.socket])
    finally:
      self.socket.close()

  def shutdown(self) -> None:
    self._server.should_exit = True
