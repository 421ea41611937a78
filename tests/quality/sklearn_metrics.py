"""scikit-learn's metrics of predictions against truth: the reference the quality tests compare
Weir's `/quality` report with.

Reads {"task": "classification" | "regression", "truth": [...], "predicted": [...],
"probabilities": [[...], ...] (optional), "classes": [...] (the probabilities' columns)} on
stdin; prints the metrics as JSON. Predicted numbers and probabilities are Weir's FP32 outputs
as JSON text: they are read back to float32 and widened, as Weir widens them.
"""

import json
import sys

import numpy as np
from sklearn import metrics


def main() -> None:
    given = json.load(sys.stdin)
    truth, predicted = given["truth"], given["predicted"]
    if given["task"] == "regression":
        truth = np.array(truth, dtype=np.float64)
        predicted = np.array(predicted, dtype=np.float32).astype(np.float64)
        print(json.dumps({
            "mae": metrics.mean_absolute_error(truth, predicted),
            "rmse": metrics.root_mean_squared_error(truth, predicted),
        }))
        return
    labels = sorted(set(truth) | set(predicted))
    out = {
        "accuracy": metrics.accuracy_score(truth, predicted),
        "macro_f1": metrics.f1_score(truth, predicted, average="macro"),
        "precision": dict(zip(labels, metrics.precision_score(
            truth, predicted, labels=labels, average=None, zero_division=0).tolist())),
        "recall": dict(zip(labels, metrics.recall_score(
            truth, predicted, labels=labels, average=None, zero_division=0).tolist())),
    }
    if "probabilities" in given:
        proba = np.array(given["probabilities"], dtype=np.float32).astype(np.float64)
        classes = given["classes"]
        # scikit-learn takes the columns in the labels' sorted order.
        order = sorted(range(len(classes)), key=lambda k: classes[k])
        out["log_loss"] = metrics.log_loss(truth, proba[:, order],
                                           labels=[classes[k] for k in order])
        if len(classes) == 2:
            positive = [1 if t == classes[1] else 0 for t in truth]
            out["brier"] = metrics.brier_score_loss(positive, proba[:, 1])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
