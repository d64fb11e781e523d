"""An MLServer 1.7.1 runtime that runs an ONNX model on ONNX Runtime (one intra-op thread), for scripts/bench_peers.sh.
MLServer's adaptive batching (max_batch_size, max_batch_time in model-settings.json) groups requests before predict."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        (y,) = self._session.run(None, {self._input: x})
        out = ResponseOutput(name="logits", shape=list(y.shape), datatype="FP32", data=y.flatten().tolist())
        return InferenceResponse(model_name=self.name, outputs=[out])
