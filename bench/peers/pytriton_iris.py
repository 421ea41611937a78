"""Serve the iris model with NVIDIA Triton through PyTriton: a Python model function, dynamic
batching on, on CPU. Answers `label` (INT64) and `probabilities` (FP32) per row, as Weir does
(with the class index rather than its name).

Usage: python pytriton_iris.py MODEL.joblib HTTP_PORT   (in the benchmark's venv)
"""

import sys

import joblib
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

model = joblib.load(sys.argv[1])
port = int(sys.argv[2])


@batch
def infer(features):
    probabilities = model.predict_proba(features).astype(np.float32)
    label = probabilities.argmax(axis=1).astype(np.int64).reshape(-1, 1)
    return {"label": label, "probabilities": probabilities}


config = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1",
                      grpc_port=port + 1, metrics_port=port + 2, log_verbose=0)
with Triton(config=config) as triton:
    triton.bind(
        model_name="iris",
        infer_func=infer,
        inputs=[Tensor(name="features", dtype=np.float32, shape=(4,))],
        outputs=[Tensor(name="label", dtype=np.int64, shape=(1,)),
                 Tensor(name="probabilities", dtype=np.float32, shape=(3,))],
        config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher()),
        strict=True,
    )
    print("serving", flush=True)
    triton.serve()
