"""Ask the iris pipeline for three predictions with NVIDIA's tritonclient (pip install
'tritonclient[http]'), unchanged: Weir speaks the same V2 protocol as Triton.

    python examples/iris/client.py --url 127.0.0.1:8080

Prints the answer as JSON: the labels, the flattened probabilities and the model version.
"""

import argparse
import json

import numpy as np
import tritonclient.http as httpclient

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 4.0, 1.0], [6.7, 3.0, 5.2, 2.3]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8080", help="host:port of weir serve")
    args = parser.parse_args()

    client = httpclient.InferenceServerClient(url=args.url)
    features = httpclient.InferInput("features", [len(ROWS), 4], "FP32")
    # JSON tensors: Weir does not implement Triton's binary tensor extension yet.
    features.set_data_from_numpy(np.array(ROWS, dtype=np.float32), binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=False),
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer("iris", inputs=[features], outputs=outputs)
    answer = {
        "model_version": result.get_response()["model_version"],
        # JSON BYTES arrive as str; binary ones would be bytes.
        "label": [str(label, "utf-8") if isinstance(label, bytes) else label
                  for label in result.as_numpy("label")],
        "probabilities": result.as_numpy("probabilities").flatten().tolist(),
    }
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
