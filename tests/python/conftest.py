"""Fixtures for the conformance tests: one real `sluice serve` process per test session, on free ports of 127.0.0.1
(see sluice_server.py), a tritonclient HTTP client for it, and for its gRPC endpoint a tritonclient gRPC client plus a
plain channel and the generated stub. The server's log is printed at the end of a session with failures."""
import pytest
import tritonclient.http as httpclient

from sluice_server import fixture_server


@pytest.fixture(scope="session")
def sluice(request):
    """Starts the server and yields its SluiceServer (addr: HTTP, grpc_addr: gRPC, both "127.0.0.1:PORT")."""
    with fixture_server(request) as srv:
        yield srv


@pytest.fixture(scope="session")
def server(sluice):
    """The HTTP address, "127.0.0.1:PORT"."""
    return sluice.addr


@pytest.fixture(scope="session")
def client(server):
    """A tritonclient HTTP client for the session's server (concurrency 8, so async_infer can keep requests in flight)."""
    c = httpclient.InferenceServerClient(server, concurrency=8, connection_timeout=30.0, network_timeout=30.0)
    yield c
    c.close()


@pytest.fixture(scope="session")
def grpc_addr(sluice):
    """The gRPC address, "127.0.0.1:PORT"."""
    assert sluice.grpc_addr.startswith("127.0.0.1:"), f"gRPC listens on {sluice.grpc_addr!r}, not on 127.0.0.1"
    return sluice.grpc_addr


@pytest.fixture(scope="session")
def grpc_client(grpc_addr):
    """A tritonclient gRPC client (its default message limit, 2 GiB, so the server's own limit is what applies)."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(grpc_addr)
    yield c
    c.close()


@pytest.fixture(scope="session")
def grpc_channel(grpc_addr):
    """A plain insecure channel, for the generated stubs (typed contents, malformed requests, health, reflection)."""
    import grpc

    ch = grpc.insecure_channel(grpc_addr, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def grpc_stub(grpc_channel):
    """inference.GRPCInferenceService's generated stub (tritonclient.grpc.service_pb2_grpc) on grpc_channel."""
    from tritonclient.grpc import service_pb2_grpc

    return service_pb2_grpc.GRPCInferenceServiceStub(grpc_channel)
