"""Side-by-side benchmark: CC-ST-AE vs py4DSTEM's pipeline on simulated data.

Both methods run in the same process on identical data (one simulated
polycrystal, the paper's background noise added per level with a fixed seed);
errors are MAE over all scan positions against the ground truth.

This is the first, reduced version of the paper's Figure 3 protocol: a table
(Markdown, CSV, JSON). Plots, the Figure-2 panel and the full-rotation case
are not implemented yet.
"""

from __future__ import annotations

import csv
import json
import platform
import resource
import time
from pathlib import Path

__all__ = ["run_benchmark", "write_results"]

PAPER_LEVELS = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 70)
QUICK_LEVELS = (0, 50)
_COMPONENTS = ("e_xx", "e_yy", "e_xy")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_benchmark(
    scan: int = 64,
    levels=PAPER_LEVELS,
    *,
    seed: int = 0,
    progress: bool = True,
    ccstae_config: dict | None = None,
) -> list[dict]:
    """Run both methods at each noise level; one result row per (level, method).

    Returns
    -------
    list of dict
        ``noise``, ``method``, ``mae_e_xx``..``mae_theta_deg`` (all scan
        positions), ``valid_fraction``, ``seconds``, ``patterns_per_s``,
        ``peak_rss_mb`` (process maximum so far).
    """
    from tqdm.auto import tqdm

    from .baseline import py4dstem_strain
    from .estimator import CCSTAE
    from .metrics import strain_errors
    from .simulate import add_background_noise, polycrystal

    clean, truth = polycrystal(scan_shape=(scan, scan), seed=seed)
    ref = truth.get_slice("reference").data.astype(bool)
    n = scan * scan
    rows = []
    for level in tqdm(list(levels), desc="noise levels", disable=not progress):
        dc = add_background_noise(clean, level, seed=seed) if level else clean
        t0 = time.perf_counter()
        model = CCSTAE(**(ccstae_config or {})).fit(dc, seed=seed, progress=False)
        ours = model.strain_map(dc, reference=ref)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = py4dstem_strain(dc, reference=ref)
        t_base = time.perf_counter() - t0
        for method, rs, sec in (("CC-ST-AE", ours, t_ours), ("py4DSTEM", base, t_base)):
            e = strain_errors(rs, truth)
            rows.append(
                {
                    "noise": level,
                    "method": method,
                    **{f"mae_{k}": e[f"mae_{k}"] for k in _COMPONENTS},
                    "mae_theta_deg": e["mae_theta_deg"],
                    "valid_fraction": e["valid_fraction"],
                    "seconds": sec,
                    "patterns_per_s": n / sec,
                    "peak_rss_mb": _peak_rss_mb(),
                }
            )
    return rows


def write_results(rows: list[dict], out: str | Path, command: str) -> Path:
    """Write ``benchmark.md``, ``benchmark.csv`` and ``benchmark.json`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}",
    }
    (out / "benchmark.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with open(out / "benchmark.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = {(r["noise"], r["method"]): r for r in rows}
    lines = [
        f"Command: `{command}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}",
        "",
        "MAE over all scan positions (x1e-3; theta in degrees); "
        "ratio = CC-ST-AE / py4DSTEM.",
        "",
        "| noise % | method | e_xx | e_yy | e_xy | theta (deg) | valid | s | patterns/s |"
        " peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in sorted({r["noise"] for r in rows}):
        for method in ("CC-ST-AE", "py4DSTEM"):
            r = by[(level, method)]
            lines.append(
                f"| {level} | {method} | {r['mae_e_xx'] * 1e3:.2f}"
                f" | {r['mae_e_yy'] * 1e3:.2f} | {r['mae_e_xy'] * 1e3:.2f}"
                f" | {r['mae_theta_deg']:.3f}"
                f" | {r['valid_fraction']:.2f} | {r['seconds']:.0f}"
                f" | {r['patterns_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
        a, b = by[(level, "CC-ST-AE")], by[(level, "py4DSTEM")]
        ratio = " | ".join(f"{a[f'mae_{k}'] / b[f'mae_{k}']:.2f}" for k in _COMPONENTS)
        lines.append(f"| {level} | ratio | {ratio} | | | | | |")
    (out / "benchmark.md").write_text("\n".join(lines) + "\n")
    return out / "benchmark.md"
