"""Shared by the examples' train.py: run `weir profile` on reference data and keep the schema
lines of the input columns (the label and score columns describe outputs, not inputs)."""

import subprocess
from pathlib import Path

OUTPUT_COLUMNS = ("label", "probabilities.max")


def input_schema(reference_csv: Path, reference_json: Path) -> str:
    """Profile `reference_csv` into `reference_json`; the `columns = [...]` TOML for inputs."""
    schema = subprocess.run(
        ["cargo", "run", "-q", "--", "profile", str(reference_csv),
         "--output", str(reference_json)],
        check=True, capture_output=True, text=True,
    ).stdout
    return "\n".join(
        line for line in schema.splitlines()
        if not any(line.strip().startswith(f'{{ name = "{c}"') for c in OUTPUT_COLUMNS)
    ) + "\n"
