"""Time the simulator: 64x64 scan of 128x128 patterns (median of 3 runs).

Run: python benchmarks/simulate_speed.py  ->  docs/benchmark_results/simulate_speed.json
"""

import json
import platform
import statistics
import time
from pathlib import Path

from py4dstem_ccstae.simulate import polycrystal


def main() -> None:
    results = {}
    for name, kw in {
        "kinematic_64x64_128px": {},
        "kinematic_64x64_128px_distorted": dict(
            descan=3.0, ellipticity=0.03, qr_rotation=15.0
        ),
        "dynamical_10nm_64x64_128px": dict(dynamical=True, thickness=100.0),
    }.items():
        times = []
        for _ in range(3 if "dynamical" not in name else 1):
            t0 = time.perf_counter()
            polycrystal(scan_shape=(64, 64), pattern_shape=(128, 128), seed=0, **kw)
            times.append(time.perf_counter() - t0)
        results[name] = {"median_s": statistics.median(times), "runs": times}
        print(name, f"{statistics.median(times):.1f} s")
    out = Path(__file__).resolve().parents[1] / "docs" / "benchmark_results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "command": "python benchmarks/simulate_speed.py",
    }
    (out / "simulate_speed.json").write_text(
        json.dumps({"meta": meta, **results}, indent=1)
    )


if __name__ == "__main__":
    main()
