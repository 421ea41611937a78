"""Ask the iris pipeline for three predictions with NVIDIA's tritonclient (pip install
'tritonclient[http]'), unchanged: Weir speaks the same V2 protocol as Triton.

    python examples/iris/client.py --url 127.0.0.1:8080

Asks twice: with tritonclient's defaults (tensors in Triton's binary extension) and with
binary_data=False (tensors as JSON). Prints both answers as JSON: labels, flattened
probabilities and the model version.
"""

import argparse
import json

import numpy as np
import tritonclient.http as httpclient

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 4.0, 1.0], [6.7, 3.0, 5.2, 2.3]]


def ask(client: httpclient.InferenceServerClient, binary: bool) -> dict:
    features = httpclient.InferInput("features", [len(ROWS), 4], "FP32")
    features.set_data_from_numpy(np.array(ROWS, dtype=np.float32), binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("iris", inputs=[features], outputs=outputs)
    # BYTES arrive as bytes in binary form and as str in JSON form.
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    return {
        "model_version": result.get_response()["model_version"],
        "label": labels,
        "probabilities": result.as_numpy("probabilities").flatten().tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8080", help="host:port of weir serve")
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    print(json.dumps({"binary": ask(client, True), "json": ask(client, False)}))


if __name__ == "__main__":
    main()
