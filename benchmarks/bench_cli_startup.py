"""How long `llavarad --help` takes (target: under 1 s), and which heavy modules the CLI imports at start.

    python benchmarks/bench_cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "deepspeed", "open_clip", "timm", "peft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    exe = shutil.which("llavarad")
    commands = {"llavarad --help": [exe, "--help"] if exe else None,
                "python -m llavarad_cli --help": [sys.executable, "-m", "llavarad_cli", "--help"],
                "python -c pass (interpreter alone)": [sys.executable, "-c", "pass"]}
    print(f"{'command':40s} {'median s':>9s} {'min s':>7s}")
    for name, cmd in commands.items():
        if cmd is None:
            print(f"{name:40s} {'not on PATH':>9s}")
            continue
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - start)
        print(f"{name:40s} {statistics.median(times):9.3f} {min(times):7.3f}")

    probe = ("import sys, llavarad_cli.cli; "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    print(f"heavy modules imported by the CLI at start: {loaded}")


if __name__ == "__main__":
    main()
