"""The regression case of the quality tests: scikit-learn's diabetes data, a LinearRegression
fit on its first 300 rows, written as a plain ONNX graph (MatMul, Add, Squeeze) that either
backend serves, with the other 142 rows and their targets.

Usage: python diabetes.py OUT_DIR   (writes diabetes.onnx and heldout.json)
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_diabetes(return_X_y=True)
    model = LinearRegression().fit(x[:300], y[:300])
    weights = numpy_helper.from_array(model.coef_.astype(np.float32).reshape(-1, 1), "w")
    bias = numpy_helper.from_array(np.array([model.intercept_], dtype=np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["product"]),
         helper.make_node("Add", ["product", "b"], ["column"]),
         helper.make_node("Squeeze", ["column", "axes"], ["value"])],
        "diabetes",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, x.shape[1]])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None])],
        initializer=[weights, bias, axes],
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_proto.ir_version = 8
    onnx.checker.check_model(model_proto)
    (out / "diabetes.onnx").write_bytes(model_proto.SerializeToString())
    heldout = {"features": x[300:].tolist(), "targets": y[300:].tolist()}
    (out / "heldout.json").write_text(json.dumps(heldout))


if __name__ == "__main__":
    main()
