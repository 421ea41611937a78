"""Export the ONNX compatibility suite: models the real converters make, and what ONNX Runtime
answers on fixed rows.

For each model writes `<name>.onnx` and `<name>.json`:
  {"exporter": "...", "inputs": [V2 tensors], "outputs": [V2 tensors ONNX Runtime gave]}
where a V2 tensor is {"name", "datatype", "shape", "data" (flat; strings for BYTES)}.

Usage: python export.py OUTPUT_DIR   (run by tests/e2e/zoo.rs in a venv of its own)
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                              RandomForestClassifier)
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

OUT = Path(sys.argv[1])
RNG = np.random.default_rng(7)
NO_ZIPMAP = {"zipmap": False}

X_IRIS, Y_IRIS = load_iris(return_X_y=True)
X_IRIS = X_IRIS.astype(np.float32)
ROWS = X_IRIS[::5]  # 30 rows across the three classes
SPECIES = np.array(["setosa", "versicolor", "virginica"])[Y_IRIS]
X_DIAB, Y_DIAB = load_diabetes(return_X_y=True)
X_DIAB = X_DIAB.astype(np.float32)


def v2(name, array):
    """A numpy array as a V2 tensor."""
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        datatype, data = "BYTES", [str(v) for v in array.ravel()]
    else:
        datatype = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
                    "bool": "BOOL", "uint8": "UINT8"}[str(array.dtype)]
        data = array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def save(name, model, inputs, exporter):
    """Write the model and ONNX Runtime's answer to `inputs` (name -> array)."""
    raw = model.SerializeToString()
    (OUT / f"{name}.onnx").write_bytes(raw)
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, inputs)
    fixture = {
        "exporter": exporter,
        "inputs": [v2(n, a) for n, a in inputs.items()],
        "outputs": [v2(n, a) for n, a in zip(names, outputs)],
    }
    (OUT / f"{name}.json").write_text(json.dumps(fixture))


def sklearn(name, model, x, y, rows, exporter="skl2onnx"):
    model.fit(x, y)
    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
                          options={id(model): NO_ZIPMAP} if hasattr(model, "predict_proba") else None,
                          target_opset={"": 17, "ai.onnx.ml": 3})
    save(name, onx, {"features": rows}, exporter)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sklearn("logistic_regression", LogisticRegression(max_iter=1000), X_IRIS, Y_IRIS, ROWS)
    sklearn("decision_tree", DecisionTreeClassifier(random_state=0), X_IRIS, Y_IRIS, ROWS)
    sklearn("random_forest", RandomForestClassifier(n_estimators=50, random_state=0),
            X_IRIS, Y_IRIS, ROWS)
    sklearn("gradient_boosting_classifier", GradientBoostingClassifier(random_state=0),
            X_IRIS, Y_IRIS, ROWS)
    sklearn("gradient_boosting_regressor", GradientBoostingRegressor(random_state=0),
            X_DIAB, Y_DIAB, X_DIAB[::15])
    sklearn("svc", SVC(probability=True, random_state=0), X_IRIS, Y_IRIS, ROWS)
    sklearn("knn", KNeighborsClassifier(), X_IRIS, Y_IRIS, ROWS)
    sklearn("mlp_regressor", MLPRegressor(hidden_layer_sizes=(32,), max_iter=2000, random_state=0),
            X_DIAB, Y_DIAB, X_DIAB[::15])
    sklearn("scaler_pca_logistic", make_pipeline(StandardScaler(), PCA(n_components=3),
                                                 LogisticRegression(max_iter=1000)),
            X_IRIS, Y_IRIS, ROWS)
    sklearn("string_labels", DecisionTreeClassifier(random_state=0), X_IRIS, SPECIES, ROWS)
    categories()
    boosters()
    save("cnn", cnn(), {"image": RNG.standard_normal((32, 1, 28, 28)).astype(np.float32)},
         "onnx.helper")
    save("attention", attention(), {"tokens": RNG.standard_normal((32, 16, 32)).astype(np.float32)},
         "onnx.helper")
    (OUT / "slow.onnx").write_bytes(slow().SerializeToString())


def categories():
    """A string input: a colour one-hot encoded beside two numbers, then a linear model."""
    colours = np.array(["red", "green", "blue"])[RNG.integers(0, 3, 150)]
    numbers = RNG.standard_normal((150, 2)).astype(np.float32)
    target = (colours == "red") ^ (numbers[:, 0] > 0)
    encode = ColumnTransformer([("colour", OneHotEncoder(), [0]), ("numbers", "passthrough", [1, 2])])
    table = np.column_stack([colours, numbers]).astype(object)
    model = make_pipeline(encode, LogisticRegression()).fit(table, target)
    onx = convert_sklearn(model, initial_types=[("colour", StringTensorType([None, 1])),
                                                 ("numbers", FloatTensorType([None, 2]))],
                          options={id(model): NO_ZIPMAP}, target_opset={"": 17, "ai.onnx.ml": 3})
    save("string_input", onx, {"colour": colours[:30].reshape(-1, 1), "numbers": numbers[:30]},
         "skl2onnx")


def boosters():
    """XGBoost and LightGBM classifiers, through onnxmltools."""
    import lightgbm
    import xgboost
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat

    types = [("features", MlFloat([None, 4]))]
    xgb = xgboost.XGBClassifier(n_estimators=30, max_depth=3).fit(X_IRIS, Y_IRIS)
    save("xgboost", convert_xgboost(xgb, initial_types=types, target_opset=15),
         {"features": ROWS}, "onnxmltools (XGBoost)")
    lgb = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(X_IRIS, Y_IRIS)
    onx = convert_lightgbm(lgb, initial_types=types, target_opset=15, zipmap=False)
    save("lightgbm", onx, {"features": ROWS}, "onnxmltools (LightGBM)")


def weight(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.1).astype(np.float32), name)


def cnn():
    """Two convolutions with batch norm, ReLU and pooling, then a dense layer: 28x28 -> 10."""
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "beta1", "m1", "v1"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    init = [weight("w1", 8, 1, 3, 3), weight("b1", 8),
            numpy_helper.from_array(np.ones(8, np.float32), "g1"), weight("beta1", 8),
            weight("m1", 8), numpy_helper.from_array(np.ones(8, np.float32), "v1"),
            weight("w2", 16, 8, 3, 3), weight("b2", 16), weight("w3", 10, 16 * 7 * 7),
            weight("b3", 10)]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def attention():
    """One transformer encoder block: layer norm, single-head attention, GELU (Erf) MLP."""
    d = 32
    nodes = [
        helper.make_node("LayerNormalization", ["tokens", "ln_g", "ln_b"], ["x"], axis=-1),
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["attended"]),
        helper.make_node("Add", ["tokens", "attended"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["u"]),
        helper.make_node("Div", ["u", "sqrt2"], ["us"]),
        helper.make_node("Erf", ["us"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["u", "e1"], ["ue"]),
        helper.make_node("Mul", ["ue", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["m"]),
        helper.make_node("Add", ["h", "m"], ["encoded"]),
    ]
    scalar = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    init = [numpy_helper.from_array(np.ones(d, np.float32), "ln_g"),
            numpy_helper.from_array(np.zeros(d, np.float32), "ln_b"),
            weight("wq", d, d), weight("wk", d, d), weight("wv", d, d),
            scalar("scale", 1 / np.sqrt(d)), weight("w1", d, 4 * d), weight("w2", 4 * d, d),
            scalar("sqrt2", np.sqrt(2)), scalar("one", 1.0), scalar("half", 0.5)]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", 16, d])],
        [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["N", 16, d])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def slow():
    """Two thousand matrix products in a row: seconds of work on a few rows, for deadlines."""
    nodes = [helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]) for i in range(2000)]
    nodes.append(helper.make_node("Identity", ["x2000"], ["y"]))
    w = numpy_helper.from_array(np.eye(256, dtype=np.float32), "w")
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


if __name__ == "__main__":
    main()
