"""Train the digits example and write everything the pipeline needs.

An MLPClassifier on scikit-learn's bundled 8x8 digits (pixel values 0..16), trained on 75% of
the rows on pixels scaled to 0..1 (`x / 16`), exported to ONNX with skl2onnx. Writes, next to
this script:

- mlp.onnx        the model artifact: input `pixels` FP32 [N, 64] (scaled), outputs `label`
                  INT64 [N] and `probabilities` FP32 [N, 10]
- expected.json   fixture: the held-out 25% of rows (raw 0..16 pixels) with scikit-learn's
                  predict and predict_proba

The pipeline (pipeline.toml, written by hand) scales the pixels in its preprocessing component
as training did, and adds the top 3 classes in its postprocessing component.
The outputs are committed, so serving the example needs no Python. Run it again from the
repository root with `python examples/digits/train.py` (needs scikit-learn and skl2onnx).
"""

import json
from pathlib import Path

from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
PIXEL_MAX = 16.0


def main() -> None:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)
    model.fit(x_train / PIXEL_MAX, y_train)
    classes = len(model.classes_)

    onnx = convert_sklearn(
        model,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        final_types=[("label", Int64TensorType([None])),
                     ("probabilities", FloatTensorType([None, classes]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (HERE / "mlp.onnx").write_bytes(onnx.SerializeToString())

    fixture = {
        "inputs": x_test.tolist(),
        "labels": model.predict(x_test / PIXEL_MAX).tolist(),
        "probabilities": model.predict_proba(x_test / PIXEL_MAX).tolist(),
    }
    (HERE / "expected.json").write_text(json.dumps(fixture) + "\n")
    print(f"held-out accuracy {model.score(x_test / PIXEL_MAX, y_test):.4f} "
          f"on {len(y_test)} rows; wrote mlp.onnx, expected.json")


if __name__ == "__main__":
    main()
