"""Outputs of fit, predict, strain_map and a saved model, for a bitwise comparison.

A refactoring must not change numbers. Run this with the code before and
after the change (e.g. from a ``git worktree`` of the earlier commit, with
``PYTHONPATH`` pointing at it) and compare the two ``res.npz``::

    PYTHONPATH=/path/to/old python benchmarks/refactor_check.py OLD_DIR
    python benchmarks/refactor_check.py NEW_DIR OLD_DIR   # also loads OLD's models

Data: the benchmark's 64x64 noise-sweep scan (``polycrystal(scan_shape=(64,
64), pattern_shape=(128, 128), seed=0)``) at 25 % noise; defaults with one
base and with two (seed 0). Writes ``res.npz`` (maps, predictions, the
saved-and-loaded model's map and, with OLD_DIR, the map of OLD_DIR's saved
model loaded by this code), ``fitted{1,2}.json`` and ``model{1,2}.h5``.
"""

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae.noise import add_background_noise
from py4dstem_ccstae.simulate import polycrystal

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
old_models = sys.argv[2] if len(sys.argv) > 2 else None
dc, truth = polycrystal(scan_shape=(64, 64), pattern_shape=(128, 128), seed=0)
dc = add_background_noise(dc, 25, counts=1e5, seed=0)
ref = truth.get_slice("reference").data.astype(bool)
res = {}
warnings.simplefilter("ignore")
for nb in (1, 2):
    m = CCSTAE(num_bases=nb).fit(dc, seed=0, progress=False)
    rs = m.strain_map(dc, reference=ref)
    res[f"map{nb}"] = np.asarray(rs.data)
    p = m.predict(dc)
    for k, v in dict(p).items():  # a dict before the typed Prediction, a mapping now
        res[f"pred{nb}_{k}"] = np.asarray(v)
    path = out / f"model{nb}.h5"
    if path.exists():
        path.unlink()
    m.save(path)
    m2 = CCSTAE.load(path)
    res[f"loaded{nb}"] = np.asarray(m2.strain_map(dc, reference=ref).data)
    fitted = m.fitted_
    (out / f"fitted{nb}.json").write_text(
        json.dumps(
            fitted if isinstance(fitted, dict) else fitted.to_dict(),
            default=str,
            sort_keys=True,
        )
    )
    if old_models:
        m3 = CCSTAE.load(Path(old_models) / f"model{nb}.h5")
        res[f"old{nb}"] = np.asarray(m3.strain_map(dc, reference=ref).data)
np.savez(out / "res.npz", **res)
print("done", sorted(res))
