"""Fit the iris example's model (StandardScaler() then LogisticRegression(max_iter=1000), on all
150 rows, as examples/iris/train.py does) and save it with joblib for the Python peers.

Usage: python iris_model.py OUT.joblib   (in the benchmark's venv)
"""

import sys

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

iris = load_iris()
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
model.fit(iris.data, iris.target)
joblib.dump(model, sys.argv[1])
