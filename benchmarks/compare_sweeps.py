"""Two runs of one sweep side by side: the CC-ST-AE rows of NEW against OLD.

Run from the repository root::

    python benchmarks/compare_sweeps.py OLD.json NEW.json --out DIR [--stem NAME]

``OLD.json`` and ``NEW.json`` are results of the same sweep script
(``py4dstem-ccstae benchmark``'s ``benchmark.json`` or
``benchmarks/multislice.py``'s ``multislice.json``) made with different code
or defaults. Rows are matched on (case, noise, method); only the CC-ST-AE
methods are compared (py4DSTEM's rows are the same program on the same data).
For every matched row the table gives each MAE component of both runs, the
ratio NEW/OLD, the training attempts of both runs and, where the rows carry
one, the ratio of the mean strain MAE to py4DSTEM's in each run. A component
is flagged when NEW is more than ``--tolerance`` (default 5 %) worse than
OLD *and* worse by more than ``--floor`` in absolute terms (default 1e-5,
theta 1e-3 deg): the floor keeps sub-1e-5 differences on clean data from
reading as regressions of many percent. A row whose numbers and time are
identical in both files (carried over, e.g. by ``multislice.py merge``, not
run again) is marked and left out of the lock-on count of matched rows and
of the geometric mean of NEW/OLD mean strain MAE (mean of e_xx, e_yy, e_xy).

Writes ``DIR/NAME.json`` and ``DIR/NAME.md`` (NAME: ``--stem``, default
``compare_sweeps``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _meta import run_meta, write  # noqa: E402

STRAIN = ("mae_e_xx", "mae_e_yy", "mae_e_xy")
#: The absolute floor below which a worse theta is not flagged (degrees).
THETA_FLOOR_DEG = 1e-3


def theta_key(row: dict) -> str:
    """The theta MAE key of a row.

    ``benchmark.json`` rows carry ``mae_theta_deg`` (degrees);
    ``multislice.json`` rows carry ``mae_theta`` (radians).
    """
    return "mae_theta_deg" if "mae_theta_deg" in row else "mae_theta"


def attempts_of(row: dict) -> int | None:
    a = row.get("attempts")
    return None if a is None else int(a)


def mean_strain(row: dict) -> float:
    return sum(float(row[k]) for k in STRAIN) / 3.0


def _ours(result: dict) -> list[dict]:
    """The CC-ST-AE rows of a result (every variant) that did not fail."""
    return [
        r
        for r in result["rows"]
        if r["method"].startswith("CC-ST-AE") and not r.get("error")
    ]


def _baseline(result: dict) -> dict:
    """py4DSTEM's rows of a result that did not fail, by (case, noise)."""
    return {
        (r["case"], float(r["noise"])): r
        for r in result["rows"]
        if r["method"] == "py4DSTEM" and not r.get("error")
    }


def compare(old: dict, new: dict, tolerance: float, floor: float) -> dict:
    """Matched CC-ST-AE rows of ``new`` against ``old`` with ratios and flags."""

    def key(r):
        return (r["case"], float(r["noise"]), r["method"])

    old_rows = {key(r): r for r in _ours(old)}
    base, base_old = _baseline(new), _baseline(old)
    floors = {
        **dict.fromkeys(STRAIN, floor),
        "mae_theta_deg": THETA_FLOOR_DEG,
        "mae_theta": math.radians(THETA_FLOOR_DEG),
    }
    ours = _ours(new)
    rows, unmatched = [], []
    for r in ours:
        o = old_rows.get(key(r))
        if o is None:
            unmatched.append(list(key(r)))
            continue
        tk = theta_key(r)
        out = {"case": r["case"], "noise": float(r["noise"]), "method": r["method"]}
        worse = []
        for k in (*STRAIN, tk):
            a, b = float(o[k]), float(r[k])
            out[f"old_{k}"], out[f"new_{k}"] = a, b
            out[f"ratio_{k}"] = b / a if a > 0 else None
            if b > a * (1 + tolerance) and b - a > floors[k]:
                worse.append(k)
        out["worse"] = worse
        out["old_attempts"], out["new_attempts"] = attempts_of(o), attempts_of(r)
        # a row carried into both files unchanged (e.g. by multislice.py merge)
        out["same_row"] = all(o.get(k) == r.get(k) for k in (*STRAIN, tk, "seconds"))
        for tag, rr, bb in (("old", o, base_old), ("new", r, base)):
            p = bb.get((r["case"], float(r["noise"])))
            out[f"{tag}_vs_py4dstem"] = (
                None if p is None else mean_strain(rr) / mean_strain(p)
            )
        rows.append(out)
    fresh = [r for r in rows if not r["same_row"]]
    n = len(fresh)
    first_new = sum(1 for r in fresh if r["new_attempts"] == 1)
    first_old = sum(1 for r in fresh if r["old_attempts"] == 1)
    logs = [
        math.log(sum(r[f"new_{k}"] for k in STRAIN) / sum(r[f"old_{k}"] for k in STRAIN))
        for r in fresh
    ]
    return {
        "tolerance": tolerance,
        "floor": floor,
        "old": {k: old.get(k) for k in ("command", "date", "git", "meta") if k in old},
        "new": {k: new.get(k) for k in ("command", "date", "git", "meta") if k in new},
        "rows": rows,
        "unmatched": unmatched,
        "first_attempt_old": [first_old, n],
        "first_attempt_new": [first_new, n],
        "first_attempt_new_all": [
            sum(1 for r in ours if attempts_of(r) == 1),
            len(ours),
        ],
        "mean_strain_ratio_geomean": math.exp(sum(logs) / len(logs)) if logs else None,
        "mean_strain_ratio_range": [math.exp(min(logs)), math.exp(max(logs))]
        if logs
        else None,
        "flagged": [
            [r["case"], r["noise"], r["method"], r["worse"]] for r in rows if r["worse"]
        ],
    }


def _fmt(x, scale=1e3, digits=2):
    return "-" if x is None else f"{scale * x:.{digits}f}"


def _describe(run: dict) -> str:
    """``command, date, git`` of a result file's header (either sweep's layout)."""
    meta = run.get("meta") or {}
    command = run.get("command") or meta.get("command", "?")
    date = run.get("date") or meta.get("date", "?")
    git = run.get("git") or (meta.get("versions") or {}).get("git_commit", "?")
    return f"`{command}`, {date}, git {git}"


def markdown(res: dict) -> str:
    lines = [
        f"Command: `{res.get('command', '?')}`; {res.get('date', '?')}; git "
        f"{res.get('git', '?')}.",
        f"OLD: `{res.get('old_file', '?')}` ({_describe(res['old'])}); "
        f"NEW: `{res.get('new_file', '?')}` ({_describe(res['new'])}).",
        "",
        "| case | noise % | method | old e_xx / e_yy / e_xy (x1e-3) | new | new/old "
        "| theta old / new | attempts old / new | vs py4DSTEM old / new | worse |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        tk = "mae_theta_deg" if "old_mae_theta_deg" in r else "mae_theta"
        ts = 1.0 if tk == "mae_theta_deg" else math.degrees(1.0)
        ratios = " / ".join(_fmt(r[f"ratio_{k}"], 1, 2) for k in STRAIN)
        lines.append(
            f"| {r['case']} | {r['noise']:g} | {r['method']} "
            f"| {' / '.join(_fmt(r[f'old_{k}']) for k in STRAIN)} "
            f"| {' / '.join(_fmt(r[f'new_{k}']) for k in STRAIN)} | {ratios} "
            f"| {_fmt(r[f'old_{tk}'], ts, 3)} / {_fmt(r[f'new_{tk}'], ts, 3)} deg "
            f"| {r['old_attempts']} / {r['new_attempts']} "
            f"| {_fmt(r['old_vs_py4dstem'], 1)} / {_fmt(r['new_vs_py4dstem'], 1)} "
            f"| {', '.join(k.replace('mae_', '') for k in r['worse']) or '-'}"
            f"{' (same row in both)' if r['same_row'] else ''} |"
        )
    fo, fn = res["first_attempt_old"], res["first_attempt_new"]
    lines += [
        "",
        f"First-attempt lock-on on the rows run in both (not the same row in both): "
        f"old {fo[0]}/{fo[1]}, new {fn[0]}/{fn[1]}; on every CC-ST-AE row of NEW: "
        f"{res['first_attempt_new_all'][0]}/{res['first_attempt_new_all'][1]}. "
        f"Components more than {100 * res['tolerance']:g} % (and {res['floor']:g}) worse: "
        f"{len(res['flagged'])} row(s).",
    ]
    if res["mean_strain_ratio_geomean"] is not None:
        lo, hi = res["mean_strain_ratio_range"]
        lines.append(
            f"Mean strain MAE, NEW/OLD, over those rows: geometric mean "
            f"{res['mean_strain_ratio_geomean']:.3f}, range {lo:.2f}-{hi:.2f}."
        )
    if res["unmatched"]:
        lines.append(f"Rows of NEW without a match in OLD: {res['unmatched']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stem", default="compare_sweeps")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--floor", type=float, default=1e-5)
    args = ap.parse_args(argv)
    old = json.loads(Path(args.old).read_text())
    new = json.loads(Path(args.new).read_text())
    res = {
        **run_meta("compare_sweeps.py", argv),
        "old_file": args.old,
        "new_file": args.new,
        **compare(old, new, args.tolerance, args.floor),
    }
    md = markdown(res)
    write(Path(args.out), args.stem, res, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
