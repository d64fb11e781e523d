"""The server process itself, on a second server of its own: the one stdout line, and a graceful stop on SIGTERM that
still answers the requests it has accepted, then exits 0."""
import asyncio
import signal

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import fp32, make_input
from sluice_server import STOP_GRACE_S, SluiceServer


@pytest.fixture
def own_server():
    with SluiceServer() as srv:
        yield srv


def test_prints_exactly_one_stdout_line_and_stops_on_sigterm(own_server):
    client = httpclient.InferenceServerClient(own_server.addr)
    assert client.is_server_live() and client.is_server_ready()
    client.close()
    own_server.proc.send_signal(signal.SIGTERM)
    assert own_server.proc.wait(timeout=STOP_GRACE_S) == 0
    assert own_server.stdout_lines == [
        f"sluice listening http={own_server.addr} grpc={own_server.grpc_addr} "
        f"admin={own_server.admin_addr} scaler={own_server.scaler_addr or 'off'}"
    ]


def test_sigterm_answers_accepted_requests(own_server):
    """Four 64-row requests to wide (256 rows, as many as its queue holds; each ~30 ms of compute) are sent together;
    once the first is answered, SIGTERM. The rest were accepted already: each still gets its correct result (or, at
    most, a clean 503) - no dropped connection - and the process exits 0 and stops accepting connections."""
    x = fp32(400, (64, 512))
    ref = httpclient.InferenceServerClient(own_server.addr).infer("wide", [make_input("input", x)]).as_numpy("logits")

    async def main():
        aio = aioclient.InferenceServerClient(own_server.addr)
        try:
            tasks = [asyncio.create_task(aio.infer("wide", [make_input("input", x)], request_id=str(i))) for i in range(4)]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=30)
            assert done, "no answer within 30 s"
            own_server.proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(aio.is_server_live(), timeout=5)
                after = "live"
            except Exception as err:  # refused connection (or a 503): it no longer serves
                after = err
            return results, after
        finally:
            await aio.close()

    results, after = asyncio.run(main())
    served = 0
    for res in results:
        if isinstance(res, InferenceServerException):
            assert res.status() == "503", (res.status(), res.message())
        else:
            assert not isinstance(res, BaseException), f"request dropped during shutdown: {res!r}"
            np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-6)
            served += 1
    assert served >= 1
    assert own_server.proc.wait(timeout=STOP_GRACE_S) == 0
    assert after != "live"
