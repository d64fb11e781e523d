"""Fixtures for the conformance tests: one real `sluice serve` process per test session, on a free port of 127.0.0.1
(see sluice_server.py), and a tritonclient HTTP client for it. The server's log is printed at the end of a session
with failures."""
import pytest
import tritonclient.http as httpclient

from sluice_server import SluiceServer, StartError


@pytest.fixture(scope="session")
def server(request):
    """Starts the server and yields its address, "127.0.0.1:PORT"."""
    srv = SluiceServer()
    try:
        addr, failure = srv.start(), None
    except StartError as err:
        addr, failure = None, str(err)
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield addr
    finally:
        code = srv.stop()
        if request.session.testsfailed or srv.killed:
            print(f"\n==== sluice log ({srv.log_path}; exit code {code}) ====\n{srv.log_tail()}")
        else:
            srv.remove_log()


@pytest.fixture(scope="session")
def client(server):
    """A tritonclient HTTP client for the session's server (concurrency 8, so async_infer can keep requests in flight)."""
    c = httpclient.InferenceServerClient(server, concurrency=8, connection_timeout=30.0, network_timeout=30.0)
    yield c
    c.close()
