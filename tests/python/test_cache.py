"""The response cache as Triton's own clients see it, on the demo `recommender` (which ships with `[cache] enabled`):
tritonclient's `parameters={"cache": False}` and `headers={"Cache-Control": ...}` reach the cache over HTTP and gRPC,
gRPC answers carry the `sluice_cache` response parameter, a hit gives exactly the fresh answer's tensors, and the
same request in JSON HTTP, binary HTTP and gRPC shares one entry.

Each test draws its own input seed, so no other test's requests are in its entries.
"""
import http.client
import json

import numpy as np
import tritonclient.http as httpclient

from helpers import grpc_input, recommender_inputs


def http_inputs(ids, feats, binary):
    a = httpclient.InferInput("item_ids", list(ids.shape), "INT64")
    a.set_data_from_numpy(ids, binary_data=binary)
    b = httpclient.InferInput("user_features", list(feats.shape), "FP32")
    b.set_data_from_numpy(feats, binary_data=binary)
    return [a, b]


def grpc_cache_status(result):
    return result.get_response().parameters["sluice_cache"].string_param


def raw_http_status(server, ids, feats, headers=None):
    """The x-sluice-cache header of a plain JSON request (tritonclient's HTTP results do not expose headers)."""
    body = json.dumps({"inputs": [
        {"name": "item_ids", "shape": list(ids.shape), "datatype": "INT64", "data": ids.flatten().tolist()},
        {"name": "user_features", "shape": list(feats.shape), "datatype": "FP32", "data": feats.flatten().tolist()},
    ]})
    conn = http.client.HTTPConnection(server, timeout=30)
    try:
        conn.request("POST", "/v2/models/recommender/infer", body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        return response.getheader("x-sluice-cache")
    finally:
        conn.close()


def test_grpc_statuses_and_bypass_parameter(grpc_client):
    ids, feats = recommender_inputs(9101, 2)
    inputs = [grpc_input("item_ids", ids), grpc_input("user_features", feats)]
    first = grpc_client.infer("recommender", inputs)
    second = grpc_client.infer("recommender", inputs)
    assert (grpc_cache_status(first), grpc_cache_status(second)) == ("miss", "hit")
    np.testing.assert_array_equal(first.as_numpy("scores"), second.as_numpy("scores"))
    fresh = grpc_client.infer("recommender", inputs, parameters={"cache": False})
    assert grpc_cache_status(fresh) == "bypass"
    np.testing.assert_array_equal(fresh.as_numpy("scores"), first.as_numpy("scores"))
    no_store = grpc_client.infer("recommender", inputs, headers={"cache-control": "no-cache"})
    assert grpc_cache_status(no_store) == "bypass"


def test_one_entry_serves_http_json_binary_and_grpc(server, client, grpc_client):
    ids, feats = recommender_inputs(9102, 3)
    assert raw_http_status(server, ids, feats) == "miss"
    # tritonclient HTTP, binary tensors both ways: the same key, so a hit, with the same scores as gRPC's hit.
    binary = client.infer("recommender", http_inputs(ids, feats, binary=True),
                          outputs=[httpclient.InferRequestedOutput("scores", binary_data=True)])
    grpc_hit = grpc_client.infer("recommender", [grpc_input("item_ids", ids), grpc_input("user_features", feats)],
                                 outputs=None)
    assert grpc_cache_status(grpc_hit) == "hit"
    np.testing.assert_array_equal(binary.as_numpy("scores"), grpc_hit.as_numpy("scores"))
    assert raw_http_status(server, ids, feats) == "hit"


def test_http_cache_control_and_parameter(server, client):
    ids, feats = recommender_inputs(9103, 1)
    assert raw_http_status(server, ids, feats, {"Cache-Control": "no-store"}) == "bypass"
    assert raw_http_status(server, ids, feats) == "miss", "no-store stored nothing"
    assert raw_http_status(server, ids, feats, {"Cache-Control": "no-cache"}) == "bypass"
    assert raw_http_status(server, ids, feats) == "hit"
    # tritonclient's request parameters reach the cache too (the answer is the same either way).
    cached = client.infer("recommender", http_inputs(ids, feats, binary=False))
    fresh = client.infer("recommender", http_inputs(ids, feats, binary=False), parameters={"cache": False})
    np.testing.assert_array_equal(cached.as_numpy("scores"), fresh.as_numpy("scores"))
