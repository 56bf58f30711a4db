"""bAbI tasks 1-20 (1k training questions each): train one model per task and print test accuracy
beside the LSTM baseline of Weston et al. (2015), Table 3 (weakly supervised, 1k).

    python benchmarks/babi.py --data-dir ../shared/data
    python benchmarks/babi.py --data-dir ../shared/data --tasks 2,3 --set data.supporting_facts=1.0

Each task trains ``configs/babi.toml`` (plus ``--set`` overrides) into ``<out>/qa<N>``: 10% of
the training stories held out for early stopping, the test file scored once with the best model.
The table goes to standard output, with the wall time per task and the load average; the same
figures go to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(os.path.abspath(__file__)).parents[1]))

from rnnkit import tasks  # noqa: E402
from rnnkit.data.babi import task_file  # noqa: E402
from rnnkit.data.datasets import dataset_file  # noqa: E402

# Weston et al. 2015, "Towards AI-Complete Question Answering", Table 3, LSTM column (1k training).
LSTM_BASELINE = {1: 50, 2: 20, 3: 20, 4: 61, 5: 70, 6: 48, 7: 49, 8: 45, 9: 64, 10: 44,
                 11: 72, 12: 74, 13: 94, 14: 27, 15: 21, 16: 23, 17: 51, 18: 52, 19: 8, 20: 91}


def _tasks(text: str) -> list[int]:
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tasks: expected comma-separated task numbers, got {text!r}") from None
    bad = [n for n in numbers if n not in LSTM_BASELINE]
    if bad or not numbers:
        raise argparse.ArgumentTypeError(f"--tasks: expected numbers in 1..20, got {text!r}")
    return numbers


def _found_tasks(data_dir: str) -> list[int]:
    """The tasks whose train and test files are in the data roots (a local copy may hold a subset)."""
    def found(number: int) -> bool:
        try:
            return all(dataset_file("babi", task_file(number, split), data_dir=data_dir or None)
                       for split in ("train", "test"))
        except FileNotFoundError:
            return False
    numbers = [n for n in LSTM_BASELINE if found(n)]
    if not numbers:
        raise SystemExit("--data-dir: no bAbI task files found; expected <root>/babi/tasks_1-20_v1-2/en/qa<N>_*.txt "
                         "under --data-dir, $RNNKIT_DATA or the cache")
    return numbers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="", help="root holding babi/tasks_1-20_v1-2/en/...")
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "babi.toml"))
    parser.add_argument("--tasks", type=_tasks, default=None,
                        help="e.g. 1,2,3 (default: every task 1-20 whose files are found)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", default="runs/babi", help="directory for the per-task runs and results.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    if args.tasks is None:
        args.tasks = _found_tasks(args.data_dir)
    overrides = list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    for number in args.tasks:
        experiment = tasks.load_experiment(args.config, [*overrides, f"data.task_id={number}"])
        start = time.monotonic()
        qa = tasks.fit(experiment, Path(args.out) / f"qa{number}")
        seconds = time.monotonic() - start
        results = json.loads((Path(args.out) / f"qa{number}" / "results.json").read_text())
        rows.append({"task": number, "name": Path(task_file(number, "test")).name.split("_")[1],
                     "test_accuracy": 100 * qa.results["test_accuracy"], "val_accuracy": 100 * qa.results["val_accuracy"],
                     "baseline": LSTM_BASELINE[number], "best_epoch": results["best_epoch"],
                     "epochs": results["epochs_run"], "seconds": seconds, "load": os.getloadavg()[0]})
        print(f"qa{number}: test {rows[-1]['test_accuracy']:.1f}% (baseline {LSTM_BASELINE[number]}), "
              f"{seconds:.0f} s", file=sys.stderr, flush=True)

    supervision = "strong (supporting facts)" if experiment.data.supporting_facts else "weak (answers only)"
    print(f"\nbAbI 1k, one model per task, {supervision}; config {args.config} {' '.join(args.overrides)}")
    print("| task | | LSTM baseline | rnnkit test | valid (held-out stories) | epochs (best) | wall s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "" if r["test_accuracy"] >= r["baseline"] else " (below baseline)"
        print(f"| qa{r['task']} | {r['name']} | {r['baseline']} | {r['test_accuracy']:.1f}{mark} | {r['val_accuracy']:.1f} "
              f"| {r['epochs']} ({r['best_epoch']}) | {r['seconds']:.0f} | {r['load']:.1f} |")
    mean = sum(r["test_accuracy"] for r in rows) / len(rows)
    base = sum(r["baseline"] for r in rows) / len(rows)
    total = sum(r["seconds"] for r in rows)
    print(f"| mean | | {base:.1f} | {mean:.1f} | | | {total:.0f} | |")
    summary = {"supervision": supervision, "config": args.config, "overrides": args.overrides, "tasks": rows,
               "mean_test_accuracy": mean, "mean_baseline": base, "total_seconds": total}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
