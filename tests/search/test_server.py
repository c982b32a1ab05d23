"""The search web page: API, bad requests, audio, host check, load, and a real browser."""

import concurrent.futures
import json
import logging
import os
import pathlib
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

import jax
import pytest

from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.server import SearchServer
from jaxretrieval.search.store import IndexStore


@pytest.fixture(scope='module')
def served(tiny_index):
  """(base URL, engine) of a server on a free loopback port, warmed up at start."""
  engine = SearchEngine(IndexStore.load(tiny_index))
  server = SearchServer(engine, '127.0.0.1', 0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{server.address[1]}', engine
  server.shutdown()
  thread.join(timeout=30)


@pytest.fixture(scope='module')
def server(served):
  return served[0]


def get(url, method='GET', headers=None):
  request = urllib.request.Request(url, method=method, headers=headers or {})
  try:
    with urllib.request.urlopen(request, timeout=60) as r:
      return r.status, r.headers, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


def raw_request(server, target: bytes, host: bytes = b'127.0.0.1') -> bytes:
  """The status line answered to a hand-written request (bytes a client library refuses)."""
  port = urllib.parse.urlsplit(server).port
  with socket.create_connection(('127.0.0.1', port), timeout=30) as s:
    s.sendall(b'GET ' + target + b' HTTP/1.1\r\nHost: ' + host + b'\r\nConnection: close\r\n\r\n')
    answer = b''
    while chunk := s.recv(65536):
      answer += chunk
  return answer.split(b'\r\n', 1)[0]


def test_page_and_search_api(server):
  status, headers, body = get(server + '/')
  assert status == 200 and 'text/html' in headers['Content-Type'] and b'<form id="search"' in body
  status, headers, body = get(server + '/api/search?q=loud+buzz+then+clicks+zork&k=4')
  data = json.loads(body)
  assert status == 200 and headers['Content-Type'] == 'application/json'
  assert data['unknown'] == ['zork'] and len(data['results']) == 4
  assert [r['rank'] for r in data['results']] == [1, 2, 3, 4]
  assert all(r['audio'].startswith('/audio/') for r in data['results'])
  status, headers, wav = get(server + data['results'][0]['audio'])
  assert status == 200 and headers['Content-Type'] == 'audio/x-wav' and wav[:4] == b'RIFF'
  assert headers['Accept-Ranges'] == 'bytes'


def test_audio_answers_range_requests(server):
  whole = get(server + '/audio/0')[2]
  status, headers, part = get(server + '/audio/0', headers={'Range': 'bytes=4-11'})
  assert status == 206 and part == whole[4:12]
  assert headers['Content-Range'] == f'bytes 4-11/{len(whole)}'
  status, _, _ = get(server + '/audio/0', headers={'Range': f'bytes={len(whole) + 10}-'})
  assert status == 416


@pytest.mark.parametrize('path,status,message', [
    ('/api/search?q=' + 'beep+' * 120, 400, 'at most 500'),
    ('/api/search?q=beep&k=0', 400, 'from 1 to 100'),
    ('/api/search?q=beep&k=101', 400, 'from 1 to 100'),
    ('/api/search?q=beep&k=ten', 400, 'from 1 to 100'),
    ('/api/search?q=beep&k=%C2%B2', 400, 'from 1 to 100'),  # '²'.isdigit() is True
    ('/api/search?q=beep&k=' + '9' * 5000, 400, 'from 1 to 100'),
    ('/api/search?q=%FF%FE', 400, 'malformed'),  # not UTF-8
    ('/api/search?k=3', 400, 'missing parameter q'),
    ('/api/search?q=beep&q=hiss', 400, 'once'),
    ('/api/search?q=beep&limit=3', 400, 'unknown parameter'),
    ('/api/search?q=beep&&&', 400, 'malformed'),
    ('/api/search?q=', 400, 'empty query'),
    ('/api/search?q=qwerty+uiop', 400, 'no word of the query'),
    ('/audio/99999', 404, 'no item'),
    ('/audio/%C2%B2', 404, 'no item'),
    ('/audio/' + '1' * 5000, 404, 'no item'),  # beyond Python's int-digit limit
    ('/audio/..%2F..%2Fetc%2Fpasswd', 404, 'no item'),
    ('/thumbnails/16', 404, 'no item'),
    ('/thumbnails/-1', 404, 'no item'),
    ('/thumbnails/%C2%B2', 404, 'no item'),
    ('/thumbnails/' + '1' * 5000, 404, 'no item'),
    ('/thumbnails/..%2Fmeta.json', 404, 'no item'),
    ('/thumbnails/0%2F..%2F..%2Fmeta.json', 404, 'no item'),
    ('/thumbnails/..%2F..%2Fetc%2Fpasswd', 404, 'no item'),
    ('/thumbnails/', 404, 'no item'),
    ('/admin', 404, 'no page'),
])
def test_bad_requests_are_answered_and_the_server_keeps_serving(server, path, status, message):
  got, headers, body = get(server + path)
  assert got == status and headers['Content-Type'] == 'application/json'
  assert message in json.loads(body)['error']
  assert get(server + '/api/search?q=beep&k=2')[0] == 200


def test_raw_non_ascii_bytes_in_the_path_are_answered(server):
  assert raw_request(server, b'/audio/\xb2').split(b' ')[1] in (b'400', b'404')
  assert raw_request(server, b'/api/search?q=beep&k=\xb2').split(b' ')[1] == b'400'
  assert get(server + '/api/search?q=beep&k=2')[0] == 200


def test_post_is_refused(server):
  assert get(server + '/api/search?q=beep', method='POST')[0] == 405


def test_unexpected_errors_answer_500_and_are_logged(served, monkeypatch, caplog):
  server, engine = served

  def broken(query, k):
    raise RuntimeError('device lost')
  monkeypatch.setattr(engine, 'search', broken)
  with caplog.at_level(logging.INFO):
    status, headers, body = get(server + '/api/search?q=beep')
  assert status == 500 and headers['Content-Type'] == 'application/json'
  assert json.loads(body)['error'] == 'internal error (RuntimeError); see the server log'
  assert any(r.exc_info and 'device lost' in str(r.exc_info[1]) for r in caplog.records)
  monkeypatch.undo()
  assert get(server + '/api/search?q=beep&k=2')[0] == 200


def test_one_log_line_per_request(server, caplog):
  with caplog.at_level(logging.INFO, logger='jaxretrieval.search.server'):
    get(server + '/api/search?q=beep&k=2')
    get(server + '/nowhere')
  lines = [r.getMessage() for r in caplog.records if r.name == 'jaxretrieval.search.server']
  assert len(lines) == 2
  assert lines[0].startswith('GET /api/search 200 ') and lines[0].endswith(' ms')
  assert lines[1].startswith('GET /nowhere 404 ')


@pytest.mark.parametrize('host,status', [
    ('127.0.0.1', 200), ('127.0.0.1:8000', 200), ('localhost', 200), ('LOCALHOST:1', 200),
    ('[::1]:8000', 200), ('[::1]', 200),
    ('attacker.example', 400), ('attacker.example:8000', 400), ('127.0.0.1.nip.io', 400),
    ('localhost.attacker.example', 400), ('', 400),
])
def test_loopback_server_checks_the_host_header(server, host, status):
  answer = raw_request(server, b'/api/search?q=beep&k=1', host.encode())
  assert answer.split(b' ')[1] == str(status).encode()


def test_audio_is_served_only_inside_the_collection_root(served, tmp_path, monkeypatch):
  server, engine = served
  store = engine.store
  inside = tmp_path / 'collection'
  inside.mkdir()
  shutil.copy(store.audio_paths[0], inside / 'ok.wav')
  (inside / 'link.wav').symlink_to('/etc/hostname')  # a symlink pointing outside
  (tmp_path / 'secret.wav').write_bytes(b'RIFF secret')
  paths = list(store.audio_paths)
  paths[:3] = [str(inside / 'ok.wav'), str(inside / 'link.wav'),
               str(inside / '..' / '..' / '..' / '..' / '..' / 'etc' / 'hostname')]
  paths[3] = str(inside / '..' / 'secret.wav')
  monkeypatch.setattr(store, 'audio_paths', paths)
  monkeypatch.setattr(store, 'audio_roots', [str(inside.resolve())])
  assert get(server + '/audio/0')[0] == 200
  for row in (1, 2, 3):
    status, _, body = get(server + f'/audio/{row}')
    assert status == 404 and 'has no audio file' in json.loads(body)['error']
  results = json.loads(get(server + '/api/search?q=beep&k=16')[2])['results']
  assert {r['id']: r['audio'] for r in results}[store.ids[1]] is None


def test_thumbnails_are_served_for_indexed_items(served, monkeypatch):
  server, engine = served
  store = engine.store
  results = json.loads(get(server + '/api/search?q=a+loud+beep&k=16')[2])['results']
  assert [r['thumbnail'] for r in results] == [r['audio'].replace('/audio/', '/thumbnails/')
                                               for r in results]
  for r in results:
    status, headers, png = get(server + r['thumbnail'])
    row = int(r['thumbnail'].rsplit('/', 1)[1])
    assert status == 200 and headers['Content-Type'] == 'image/png'
    assert png == store.thumbnail(row) and png[:8] == b'\x89PNG\r\n\x1a\n'
  # The request names a row; no path reaches the file system, even unencoded.
  for target in (b'/thumbnails/../meta.json', b'/thumbnails/0/../../meta.json',
                 b'/thumbnails/%2e%2e/meta.json', b'/thumbnails/../../../../etc/passwd'):
    assert raw_request(server, target).split(b' ')[1] == b'404', target
  monkeypatch.setattr(store, 'thumbnails', [None])  # an index without audio has none
  status, _, body = get(server + '/thumbnails/0')
  assert status == 404 and 'has no thumbnail' in json.loads(body)['error']
  results = json.loads(get(server + '/api/search?q=a+loud+beep&k=3')[2])['results']
  assert [r['thumbnail'] for r in results] == [None] * 3


def test_twenty_concurrent_clients_are_answered_without_compiling(server):
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **_: compiles.append(event) if 'compile' in event else None)
  queries = [f'{w} {v}' for w in ('a loud', 'a quiet', 'a high', 'a low', 'a short')
             for v in ('beep', 'siren', 'hum', 'whistle')]

  def ask(i):
    return get(server + '/api/search?' + urllib.parse.urlencode({'q': queries[i], 'k': i + 1}))

  with concurrent.futures.ThreadPoolExecutor(20) as pool:
    answers = list(pool.map(ask, range(20), timeout=60))
  assert [a[0] for a in answers] == [200] * 20
  assert [len(json.loads(a[2])['results']) for a in answers] == [min(i + 1, 16) for i in range(20)]
  assert not compiles, f'the query path compiled while serving: {compiles}'


def test_an_exposed_server_does_not_check_the_host(tiny_index):
  from jaxretrieval.search.server import is_loopback, make_app
  assert is_loopback('127.0.0.1') and is_loopback('::1') and is_loopback('localhost')
  assert not is_loopback('0.0.0.0') and not is_loopback('192.168.1.2')
  from starlette.middleware.trustedhost import TrustedHostMiddleware
  engine = SearchEngine(IndexStore.load(tiny_index))
  kinds = lambda app: [m.cls for m in app.user_middleware]
  assert TrustedHostMiddleware in kinds(make_app(engine, check_host=True))
  assert TrustedHostMiddleware not in kinds(make_app(engine, check_host=False))


def test_info_describes_the_index(server):
  status, _, body = get(server + '/api/info')
  info = json.loads(body)
  assert status == 200 and info['items'] == 16 and info['name'] == 'synthcaps/tiny'
  assert info['model'] == 'Collaborative Experts' and info['experts'] == ['logmel', 'spectral']
  assert len(info['examples']) == 3
  for q in info['examples']:  # each example is a caption of the collection, and searchable
    assert get(server + '/api/search?' + urllib.parse.urlencode({'q': q}))[0] == 200


def test_results_carry_what_a_person_recognises(server):
  data = json.loads(get(server + '/api/search?q=a+high+whistles&k=3')[2])
  assert data['substitutions'] == {'whistles': 'whistle'}
  for r in data['results']:
    assert r['captions'] and r['name'].endswith('.wav') and r['duration'] > 0
    assert set(r['cosines']) == set(r['weights']) == set(data['weights'])


@pytest.mark.slow
def test_search_in_a_headless_browser(server, tmp_path):
  """Drives the page as a person; writes a screenshot of a results page (to
  $SEARCH_SCREENSHOT when set, for the README)."""
  chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
  assert chromium and driver, 'install Debian packages chromium and chromium-driver (.ci/run does)'
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support import expected_conditions
  from selenium.webdriver.support.ui import WebDriverWait
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
               '--disable-background-networking', '--disable-component-update',
               '--disable-sync', '--no-first-run', '--autoplay-policy=no-user-gesture-required',
               '--mute-audio', '--window-size=1100,1400'):
    options.add_argument(flag)
  browser = webdriver.Chrome(service=Service(driver), options=options)
  results = lambda: browser.find_elements(By.CSS_SELECTOR, 'li.result')
  wait = WebDriverWait(browser, 30)
  try:
    browser.get(server + '/')  # the start page says what is indexed and offers examples
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#examples a'))
    about = browser.find_element(By.ID, 'about').text
    assert '16 sounds of synthcaps/tiny' in about and 'Collaborative Experts' in about
    assert 'logmel, spectral' in about
    example = browser.find_element(By.CSS_SELECTOR, '#examples a')
    example_query = example.text
    example.click()
    wait.until(lambda b: len(results()) == 10)
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)['q'] == [
        example_query]
    assert not browser.find_elements(By.CSS_SELECTOR, '#examples a')
    browser.get(server + '/')
    box = wait.until(expected_conditions.presence_of_element_located((By.ID, 'q')))
    box.send_keys('a loud siren while a quiet hum plays flibbertigibbet whistles', Keys.ENTER)
    wait.until(lambda b: len(results()) == 10)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)
    assert query == {'q': ['a loud siren while a quiet hum plays flibbertigibbet whistles'],
                     'k': ['10']}
    message = browser.find_element(By.ID, 'message').text
    assert 'flibbertigibbet' in message and 'whistles → whistle' in message
    assert len(browser.find_elements(By.CSS_SELECTOR, '#weights .weight')) == 2
    for row in results():  # caption, file name, duration, and a cosine bar per expert
      assert row.find_element(By.CLASS_NAME, 'title').text
      # Each item's other captions, and its thumbnail, loaded and decoded by the browser.
      assert row.find_elements(By.CSS_SELECTOR, '.captions .caption')
      thumb = row.find_element(By.CSS_SELECTOR, 'img.thumb')
      assert thumb.get_attribute('alt') == 'Spectrogram of ' + row.find_element(
          By.CLASS_NAME, 'name').text
      wait.until(lambda b, t=thumb: b.execute_script(
          'return arguments[0].complete && arguments[0].naturalWidth > 0', t))
      assert browser.execute_script('return [arguments[0].naturalWidth, '
                                    'arguments[0].naturalHeight]', thumb) == [160, 48]
      assert row.find_element(By.CLASS_NAME, 'name').text.endswith('.wav')
      assert row.find_element(By.CLASS_NAME, 'duration').text.endswith(' s')
      assert len(row.find_elements(By.CSS_SELECTOR, '.cosine .track .bar')) == 2
    audio = browser.find_elements(By.CSS_SELECTOR, 'li.result audio')
    assert len(audio) == 10 and audio[0].get_attribute('preload') == 'metadata'
    # Play the first result and seek to its middle: the player reads its duration, the
    # server's Range answers make it seekable, and playback goes on from there.
    wait.until(lambda b: b.execute_script('return arguments[0].duration > 0', audio[0]))
    half = browser.execute_script(
        'const a = arguments[0]; a.currentTime = a.duration / 2; a.play(); '
        'return a.duration / 2;', audio[0])
    wait.until(lambda b: b.execute_script(
        'const a = arguments[0]; return a.seekable.length > 0 && '
        '(a.currentTime > arguments[1] || a.ended);', audio[0], half))
    assert browser.execute_script('return arguments[0].error', audio[0]) is None
    screenshot = pathlib.Path(os.environ.get('SEARCH_SCREENSHOT', tmp_path / 'results.png'))
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    first = [r.find_element(By.CLASS_NAME, 'id').text for r in results()]
    box = browser.find_element(By.ID, 'q')
    box.clear()
    box.send_keys('qwerty', Keys.ENTER)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, 'message'),
                                                                 'no word of the query'))
    assert not results() and 'q=qwerty' in browser.current_url
    browser.back()  # the previous search comes back with its results
    wait.until(lambda b: len(results()) == 10)
    assert [r.find_element(By.CLASS_NAME, 'id').text for r in results()] == first
    assert browser.find_element(By.ID, 'q').get_attribute('value').startswith('a loud siren')
    browser.get(server + '/?q=a+bell&k=5')  # a linked results page runs its query
    wait.until(lambda b: len(results()) == 5)
  finally:
    browser.quit()
