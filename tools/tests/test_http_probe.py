import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from provision_lint.http_probe import get, main


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if self.path == "/healthz" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"no")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_any_answer_counts_as_up(server):
    assert get(f"{server}/healthz") == (200, "ok")
    assert get(f"{server}/other") == (404, "no")
    assert main([f"{server}/other"]) == 0


def test_a_wanted_status_must_be_met(server):
    assert main(["--status", "200", f"{server}/healthz"]) == 0
    assert main(["--status", "200", f"{server}/other"]) == 1


def test_nothing_listening_is_not_up():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert get(f"http://127.0.0.1:{port}/healthz") is None
    assert main([f"http://127.0.0.1:{port}/healthz"]) == 1
