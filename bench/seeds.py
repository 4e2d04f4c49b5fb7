"""Mean ± std over seeds of a `dvc exp show --csv` table: one row per recipe.

    dvc exp show --csv > experiments.csv
    python -m bench.seeds experiments.csv [--seed-param train.seed]

Finished experiments that differ only in the seed param form one recipe, named by the
params where they differ from the workspace's row (the baseline commit's params). The
workspace and baseline rows are left out: they repeat one of the seeded runs.
"""

import argparse
from pathlib import Path

import pandas as pd
import yaml

METRICS = ("test_accuracy", "test_loss", "val_loss")


def param_keys(node: dict, prefix: str = "") -> list[str]:
    """params.yaml's keys, flattened as `dvc exp show` names its columns (train.augment.hflip)."""
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        keys += param_keys(value, f"{name}.") if isinstance(value, dict) else [name]
    return keys


def recipes(table: pd.DataFrame, params: list[str], seed_param: str) -> pd.DataFrame:
    changing = [key for key in params if key in table.columns and key != seed_param]
    baseline = table[table["rev"] == "workspace"].iloc[0]
    runs = table[table["typ"].isin(["branch_commit", "branch_base"]) & (table["State"] == "Success")]

    def name(row: pd.Series) -> str:
        changed = [f"{key}={row[key]}" for key in changing if str(row[key]) != str(baseline[key])]
        return ", ".join(changed) or "default"

    rows = []
    for recipe, group in runs.groupby(runs.apply(name, axis=1), sort=False):
        row = {"recipe": recipe, "seeds": len(group)}
        for metric in METRICS:
            values = group[metric].astype(float)
            row[metric] = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="the output of `dvc exp show --csv`")
    parser.add_argument("--seed-param", default="train.seed")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="whose keys are the params")
    args = parser.parse_args()
    keys = param_keys(yaml.safe_load(args.params.read_text()))
    summary = recipes(pd.read_csv(args.table, keep_default_na=False, na_values={"State": [""]}), keys, args.seed_param)
    print("| " + " | ".join(summary.columns) + " |")
    print("|" + " --- |" * len(summary.columns))
    for row in summary.itertuples(index=False):
        print("| " + " | ".join(str(value) for value in row) + " |")


if __name__ == "__main__":
    main()
