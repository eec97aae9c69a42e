"""Wall time and peak memory of `mcl demo --quick` and `mcl demo` (the README's main job).

Goals on a 2-core CPU: quick < 3 minutes, full <= 15 minutes, peak memory <= 4 GB. Each mode runs in
its own child process (so ru_maxrss is that run's largest process), after one untimed encoder
preparation so that the figures do not include the one-off conversion of multilingual-e5-small.

    python benchmarks/bench_demo.py                # both modes
    python benchmarks/bench_demo.py --modes quick  # quick only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A wrapper process runs the demo and reports the peak RSS of its children (the demo and the Prefect server).
_MEASURE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(done.returncode)\n"
)


def run_mode(mode: str, out: Path, env: dict[str, str]) -> dict:
    args = [sys.executable, "-m", "flows.cli", "demo", "--out", str(out)] + (["--quick"] if mode == "quick" else [])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    seconds = time.perf_counter() - start
    peak = next((int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")), -1)
    promoted = next((line.strip() for line in done.stdout.splitlines() if "arrivals promoted" in line), "")
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
    return {"mode": mode, "seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1024**2, 2),
            "returncode": done.returncode, "summary": promoted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="quick,full")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    goals = {"quick": 180, "full": 900}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # A fresh cache per benchmark (no step results from earlier demos), with the encoder prepared untimed.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MCL_CACHE_DIR": f"{tmp}/cache",
               "PREFECT_HOME": f"{tmp}/prefect"}
        subprocess.run([sys.executable, "-m", "flows.cli", "encoder", "prepare"], cwd=ROOT, check=True,
                       capture_output=True, env=env)
        for mode in args.modes.split(","):
            r = run_mode(mode, Path(tmp) / mode, env)
            r["goal_seconds"] = goals[mode]
            r["meets_goal"] = r["returncode"] == 0 and r["seconds"] <= goals[mode] and 0 < r["peak_rss_gb"] <= 4
            results.append(r)
            print(f"mcl demo {'--quick' if mode == 'quick' else ''}: {r['seconds']:.0f} s (goal <= {goals[mode]} s), "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB (goal <= 4), exit {r['returncode']}  {r['summary']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
