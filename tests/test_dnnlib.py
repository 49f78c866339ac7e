"""dnnlib: EasyDict, construction by name, and open_url with its cache and offline error."""

import http.server
import os
import threading

import pytest

import dnnlib
from dnnlib import util


def test_easydict():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        d.missing


def test_construct_class_by_name():
    obj = dnnlib.construct_class_by_name(class_name='collections.OrderedDict', a=1)
    assert type(obj).__name__ == 'OrderedDict' and obj['a'] == 1
    assert dnnlib.get_obj_by_name('os.path.join') is os.path.join
    with pytest.raises(ValueError, match='no attribute'):
        dnnlib.get_obj_by_name('os.path.no_such_function')
    with pytest.raises(ValueError, match='dotted name'):
        dnnlib.get_obj_by_name('nodots')


def test_open_local_file_and_file_url(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'hello')
    with dnnlib.open_url(str(path)) as f:
        assert f.read() == b'hello'
    with dnnlib.open_url(path.as_uri()) as f:
        assert f.read() == b'hello'
    with pytest.raises(FileNotFoundError, match='does not exist'):
        dnnlib.open_url(str(tmp_path / 'missing.pkl'))


def test_offline_url_names_url_cache_and_local_alternative(tmp_path, monkeypatch, refused_url):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    url = refused_url('weights/net.pkl')
    with pytest.raises(dnnlib.DownloadError) as info:
        dnnlib.open_url(url, num_attempts=1, verbose=False, timeout=5)
    msg = str(info.value)
    assert url in msg and 'ConnectionError' in msg and str(tmp_path / 'cache') in msg and 'local path' in msg


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        body = b'payload' if self.path == '/file.bin' else b''
        self.send_response(200 if body else 404)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_download_is_cached_and_then_works_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    server = http.server.HTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{server.server_port}/file.bin'
    try:
        with dnnlib.open_url(url, verbose=False) as f:
            assert f.read() == b'payload'
        with pytest.raises(dnnlib.DownloadError, match='404'):
            dnnlib.open_url(f'http://127.0.0.1:{server.server_port}/missing.bin', num_attempts=1, verbose=False)
    finally:
        server.shutdown()
    # The server is gone: the cached copy answers.
    hits = _Handler.hits
    path = dnnlib.open_url(url, return_filename=True, verbose=False)
    assert path == util.url_cache_path(url) and open(path, 'rb').read() == b'payload'
    assert _Handler.hits == hits
