"""Triton (the `nvidia-pytriton` wheel: tritonserver with its Python backend) serving the demo ONNX models through ONNX
Runtime, for scripts/bench_peers.sh. One intra-op thread; dynamic batching like Sluice's shipped settings as far as
Triton allows (max batch 64, a fixed max_queue_delay: Triton has no "don't wait when alone")."""
import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MODELS = {"wide": ("models/wide/1/model.onnx", 512, 16), "fraud_mlp": ("models/fraud_mlp/2/model.onnx", 64, 2)}


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, required=True)
    parser.add_argument("--grpc", type=int, required=True)
    parser.add_argument("--metrics", type=int, required=True)
    parser.add_argument("--delay-us", type=int, default=2000)
    args = parser.parse_args()
    config = TritonConfig(http_port=args.http, grpc_port=args.grpc, metrics_port=args.metrics, log_verbose=0)
    with Triton(config=config) as triton:
        for name, (path, width, outputs) in MODELS.items():
            sess = session(path)

            def make(sess):
                @batch
                def infer(input):
                    return {"logits": sess.run(None, {"input": input.astype(np.float32)})[0]}

                return infer

            triton.bind(
                model_name=name,
                infer_func=make(sess),
                inputs=[Tensor(name="input", dtype=np.float32, shape=(width,))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(outputs,))],
                config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
                strict=False,
            )
        triton.serve()


if __name__ == "__main__":
    main()
