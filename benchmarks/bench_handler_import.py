"""Cold-start import cost of the Lambda handlers compared with `import boto3` alone.

Each sample is a fresh interpreter (cwd and PYTHONPATH = the Lambda asset root) that times one
import with perf_counter; the median over the runs is reported. Two settings: handler code with
cached bytecode (.pyc), and handler code from source only, as on Lambda, whose /var/task is
read-only so nothing can be cached there (boto3 and Powertools come precompiled in both). Acceptance
(the ledger issue): each of the four handlers costs at most 1.5 times `import boto3` (ratio <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAMBDAS = Path(__file__).resolve().parents[1] / "lambdas"
TARGETS = ("boto3", "transcribe_trigger.handler", "invoke_sd.handler", "transcribe_failed.handler", "sweeper.handler")
LIMIT = 1.5
# perf_counter around the import only: interpreter start-up is the same for every target.
SNIPPET = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def time_import(module: str, root: Path, env: dict[str, str]) -> float:
    """Seconds one fresh interpreter takes to import `module` from `root`."""
    output = subprocess.run(
        [sys.executable, "-c", SNIPPET.format(module=module)],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.strip())


def measure(root: Path, env: dict[str, str], runs: int) -> dict[str, list[float]]:
    """Samples per target, interleaved so drift in machine load affects all targets alike."""
    for module in TARGETS:
        time_import(module, root, env)  # warm the OS file cache (and write .pyc where allowed)
    samples: dict[str, list[float]] = {module: [] for module in TARGETS}
    for _ in range(runs):
        for module in TARGETS:
            samples[module].append(time_import(module, root, env))
    return samples


def report(title: str, samples: dict[str, list[float]]) -> float:
    """Print one table; return the worst handler/boto3 ratio of medians."""
    baseline = statistics.median(samples["boto3"])
    print(f"\n{title}")
    print(f"  {'module':<28} {'median ms':>10} {'min ms':>8} {'ratio':>6}")
    worst = 0.0
    for module in TARGETS:
        median = statistics.median(samples[module])
        ratio = median / baseline
        if module != "boto3":
            worst = max(worst, ratio)
        print(f"  {module:<28} {median * 1000:>10.1f} {min(samples[module]) * 1000:>8.1f} {ratio:>6.2f}")
    return worst


def main() -> int:
    """Measure both settings, print the tables, and exit 1 when a handler is over the limit."""
    parser = argparse.ArgumentParser(description="Import cost of the Lambda handlers vs boto3.")
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per target (default 15)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.runs} fresh interpreters per target, median import time")
    cached = report("handler code with cached .pyc", measure(LAMBDAS, dict(os.environ), args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lambdas"
        shutil.copytree(LAMBDAS, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        source = report("handler code from source only (as on Lambda)", measure(root, env, args.runs))
    worst = max(cached, source)
    print(f"\nworst handler ratio {worst:.2f} (limit {LIMIT}): {'ok' if worst <= LIMIT else 'OVER THE LIMIT'}")
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
