"""The search web page: API, bad requests, audio, and a real browser."""

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from jaxretrieval.search.engine import SearchEngine
from jaxretrieval.search.server import make_server
from jaxretrieval.search.store import IndexStore


@pytest.fixture(scope='module')
def server(tiny_index):
  httpd = make_server(SearchEngine(IndexStore.load(tiny_index)), '127.0.0.1', 0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()
  httpd.server_close()


def get(url, method='GET'):
  request = urllib.request.Request(url, method=method)
  try:
    with urllib.request.urlopen(request, timeout=60) as r:
      return r.status, r.headers.get('Content-Type'), r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers.get('Content-Type'), e.read()


def test_page_and_search_api(server):
  status, kind, body = get(server + '/')
  assert status == 200 and 'text/html' in kind and b'<form id="search"' in body
  status, kind, body = get(server + '/api/search?q=loud+buzz+then+clicks+zork&k=4')
  data = json.loads(body)
  assert status == 200 and kind == 'application/json'
  assert data['unknown'] == ['zork'] and len(data['results']) == 4
  assert [r['rank'] for r in data['results']] == [1, 2, 3, 4]
  assert all(r['audio'].startswith('/audio/') for r in data['results'])
  status, kind, wav = get(server + data['results'][0]['audio'])
  assert status == 200 and kind == 'audio/x-wav' and wav[:4] == b'RIFF'


@pytest.mark.parametrize('path,status,message', [
    ('/api/search?q=' + 'beep+' * 120, 400, 'at most 500'),
    ('/api/search?q=beep&k=0', 400, 'from 1 to 100'),
    ('/api/search?q=beep&k=101', 400, 'from 1 to 100'),
    ('/api/search?q=beep&k=ten', 400, 'from 1 to 100'),
    ('/api/search?k=3', 400, 'missing parameter q'),
    ('/api/search?q=beep&q=hiss', 400, 'once'),
    ('/api/search?q=beep&limit=3', 400, 'unknown parameter'),
    ('/api/search?q=beep&&&', 400, 'malformed'),
    ('/api/search?q=', 400, 'empty query'),
    ('/api/search?q=qwerty+uiop', 400, 'no word of the query'),
    ('/audio/99999', 404, 'no item'),
    ('/audio/..%2F..%2Fetc%2Fpasswd', 404, 'no item'),
    ('/admin', 404, 'no page'),
])
def test_bad_requests_are_answered_and_the_server_keeps_serving(server, path, status, message):
  got, kind, body = get(server + path)
  assert got == status and kind == 'application/json'
  assert message in json.loads(body)['error']
  assert get(server + '/api/search?q=beep&k=2')[0] == 200


def test_post_is_refused(server):
  assert get(server + '/api/search?q=beep', method='POST')[0] == 405


@pytest.mark.slow
def test_search_in_a_headless_browser(server):
  chromium, driver = shutil.which('chromium'), shutil.which('chromedriver')
  assert chromium and driver, 'install Debian packages chromium and chromium-driver (.ci/run does)'
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions
  from selenium.webdriver.support.ui import WebDriverWait
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
               '--disable-background-networking', '--disable-component-update',
               '--disable-sync', '--no-first-run'):
    options.add_argument(flag)
  browser = webdriver.Chrome(service=Service(driver), options=options)
  try:
    browser.get(server + '/')
    box = browser.find_element(By.ID, 'q')
    box.send_keys('a loud siren while a quiet hum plays flibbertigibbet')
    browser.find_element(By.ID, 'go').click()
    wait = WebDriverWait(browser, 30)
    wait.until(expected_conditions.presence_of_all_elements_located((By.CSS_SELECTOR, 'li.result')))
    results = browser.find_elements(By.CSS_SELECTOR, 'li.result')
    assert len(results) == 10
    assert len(browser.find_elements(By.CSS_SELECTOR, 'li.result audio')) == 10
    assert 'flibbertigibbet' in browser.find_element(By.ID, 'message').text
    assert len(browser.find_elements(By.CSS_SELECTOR, '#weights .weight')) == 2
    box.clear()
    box.send_keys('qwerty')
    browser.find_element(By.ID, 'go').click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, 'message'),
                                                                 'no word of the query'))
    assert not browser.find_elements(By.CSS_SELECTOR, 'li.result')
  finally:
    browser.quit()
