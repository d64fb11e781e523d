"""A stand-in for OCI Monitoring's ingestion endpoint, for the OCI publisher tests: an HTTP server on 127.0.0.1:0 (in a
thread) that records every request and answers as told.

`answer(*statuses)` queues answers; when the queue is empty, `default` is used. A status of HANG keeps the request
open (the handler waits up to HANG_LIMIT_S, or until `release()`), so the client's timeout is what ends it.
"""
import collections
import http.server
import json
import threading
import time

HANG = "hang"
HANG_LIMIT_S = 20.0
OK_BODY = json.dumps({"failedMetricsCount": 0, "failedMetrics": []}).encode()


class Request:
    def __init__(self, method, path, headers, body, answered, received_at):
        self.method = method
        self.path = path
        self.headers = headers  # lowercased name -> value
        self.body = body
        self.answered = answered  # status code, or HANG
        self.received_at = received_at

    def json(self):
        return json.loads(self.body)


class Receiver:
    def __init__(self, default=200):
        self.default = default
        self.requests = []
        self._answers = collections.deque()
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status = receiver._next_answer()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Request("POST", self.path, headers, body, status, time.time()))
                if status == HANG:
                    receiver._released.wait(HANG_LIMIT_S)
                    self.close_connection = True
                    return
                if status == 200:
                    payload = OK_BODY
                else:
                    payload = json.dumps({"code": f"Test{status}", "message": f"test receiver answered {status}"}).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.send_header("opc-request-id", "test-receiver")
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def answer(self, *statuses):
        with self._lock:
            self._answers.extend(statuses)

    def set_default(self, status):
        with self._lock:
            self.default = status
            if status != HANG:
                self._released.set()
                self._released = threading.Event()

    def release(self):
        self._released.set()

    def _next_answer(self):
        with self._lock:
            return self._answers.popleft() if self._answers else self.default

    def snapshot(self):
        with self._lock:
            return list(self.requests)

    def wait_for(self, predicate, timeout_s, poll_s=0.05):
        """Waits until predicate(requests) is truthy (returns its value) or timeout_s passes (returns None)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate(self.snapshot())
            if value or time.monotonic() >= deadline:
                return value or None
            time.sleep(poll_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
