"""Generate and execute ``examples/mixed_workflow.ipynb`` (stored with outputs).

Run from anywhere::

    python examples/make_mixed_workflow.py [--out PATH] [--no-execute]

The cells are written here (edit this file, not the notebook), executed with
nbclient in a temporary folder (kernel ``python3``; the EMD file the notebook
writes is not kept), and the executed notebook is written to ``--out``.
Volatile metadata (execution timestamps) is dropped so that reruns differ only
where the outputs differ. The wall time of the execution is printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
OUT = HERE / "mixed_workflow.ipynb"
KERNEL = "python3"
TIMEOUT_S = 1200


def _md(text: str):
    return new_markdown_cell(text.strip("\n"))


def _code(text: str):
    return new_code_cell(text.strip("\n"))


CELLS = [
    _md(
        """
# Mixed workflow: py4DSTEM and CC-ST-AE side by side

This notebook runs one small data set through both strain-mapping methods:

1. simulate a noisy Si polycrystal with exact ground truth;
2. look at its calibration and at the network inputs made from it;
3. map strain with py4DSTEM's `StrainMap` pipeline (automated by
   `py4dstem_ccstae.baseline.py4dstem_strain`) and with the CC-ST-AE
   (`py4dstem_ccstae.CCSTAE`), with the same reference region;
4. compare the maps with `py4DSTEM.visualize.show_strain`;
5. compute the errors of both against the truth (`metrics.strain_errors`);
6. save everything into one EMD file with `py4DSTEM.save` and read it back
   with `py4DSTEM.read`.

The scan is small and the CC-ST-AE trains for fewer epochs than its default,
so that the notebook runs in a couple of minutes on a 2-core CPU. Its numbers
illustrate the workflow; they are **not** a benchmark (see
`docs/benchmarks.md` for that). All random choices are seeded.

This notebook is generated and executed by `python examples/make_mixed_workflow.py`;
edit that script, not the notebook.
"""
    ),
    _code(
        """
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the stored notebook

import time
import warnings
from pathlib import Path

%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import py4DSTEM

from py4dstem_ccstae import CCSTAE, DiffractionInputs
from py4dstem_ccstae.baseline import py4dstem_strain
from py4dstem_ccstae.metrics import strain_errors
from py4dstem_ccstae.simulate import add_background_noise, polycrystal, truth_transform

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, no ipywidgets
plt.rcParams.update({"figure.dpi": 60, "savefig.dpi": 60, "font.size": 9})
SEED = 0
print("py4DSTEM", py4DSTEM.__version__)
"""
    ),
    _md(
        """
## 1. Simulate a small noisy data set

A 16x16 scan of 128x128 patterns: a Si [001] polycrystal whose grains carry
random strain and in-plane rotations, a drifting direct beam (descan), and the
paper's Poisson background noise at 25 %. Grain 0 is unstrained and is the
reference region.
"""
    ),
    _code(
        """
t_start = time.perf_counter()
clean, truth = polycrystal(
    scan_shape=(16, 16),
    pattern_shape=(128, 128),
    material="Si",
    num_grains=6,
    descan=2.0,
    seed=SEED,
)
datacube = add_background_noise(clean, percent=25, counts=1e5, seed=SEED)
datacube.name = "datacube"
truth.name = "truth"
reference = truth.get_slice("reference").data.astype(bool)  # (Rx, Ry) bool
print(datacube)
print(f"reference region: {reference.sum()} of {reference.size} scan positions")
"""
    ),
    _md(
        """
## 2. Calibration

Both methods read the same calibration: Q pixel size and units, the origin of
every pattern (here it drifts across the scan), and, when present, the ellipse
and the Q/R rotation. Axes are `[Rx, Ry, Qx, Qy]`; `qx` is the row of a
pattern.
"""
    ),
    _code(
        """
cal = datacube.calibration
print("Q pixel size:", cal.get_Q_pixel_size(), cal.get_Q_pixel_units())
print("R pixel size:", cal.get_R_pixel_size(), cal.get_R_pixel_units())
qx0, qy0 = cal.get_origin()
print(
    f"origin qx0 from {qx0.min():.2f} to {qx0.max():.2f} px, "
    f"qy0 from {qy0.min():.2f} to {qy0.max():.2f} px"
)

fig, ax = plt.subplots(1, 4, figsize=(13, 3.2))
ax[0].imshow(np.sqrt(clean.data[8, 8]), cmap="gray")
ax[0].set_title("clean pattern [8, 8]")
ax[1].imshow(np.sqrt(datacube.data[8, 8]), cmap="gray")
ax[1].set_title("noisy pattern [8, 8]")
for a, m, name in ((ax[2], qx0, "origin qx0 (px)"), (ax[3], qy0, "origin qy0 (px)")):
    im = a.imshow(m, cmap="viridis")
    a.set_title(name)
    fig.colorbar(im, ax=a, shrink=0.8)
for a in ax[:2]:
    a.set_xlabel("qy")
    a.set_ylabel("qx")
for a in ax[2:]:
    a.set_xlabel("Ry")
    a.set_ylabel("Rx")
plt.tight_layout()
plt.show()
"""
    ),
    _md(
        """
The CC-ST-AE does not see detector pixels: `DiffractionInputs` resamples each
pattern onto a square grid of calibrated reciprocal vectors (origin, ellipse,
pixel size and Q/R rotation undone), scales the intensities, and defines the
ring mask the losses use (the direct beam is outside it, the Bragg disks
inside). `CCSTAE.fit` builds these inputs itself; here they are built once to
look at them.
"""
    ),
    _code(
        """
inputs = DiffractionInputs.from_datacube(datacube)
print(inputs)
print(
    f"dq = {inputs.dq:.4f} {inputs.units} per input pixel, "
    f"ring = ({inputs.ring[0]:.3f}, {inputs.ring[1]:.3f}) {inputs.units} "
    f"(inner radius from: {inputs.ring_source})"
)
mean = inputs.mean_pattern()
fig, ax = plt.subplots(1, 2, figsize=(6.5, 3.2))
ax[0].imshow(mean, cmap="gray")
ax[0].set_title("mean network input")
ax[1].imshow(np.where(inputs.mask, mean, np.nan), cmap="gray")
ax[1].set_title("inside the ring mask")
plt.tight_layout()
plt.show()
"""
    ),
    _md(
        """
## 3. Strain with py4DSTEM and with the CC-ST-AE

`py4dstem_strain` runs py4DSTEM's correlation pipeline without manual steps
(probe template, Bragg disk detection, origin fit, basis vectors, lattice fit,
`get_strain` against the reference region) and returns a plain `RealSlice`.
"""
    ),
    _code(
        """
t0 = time.perf_counter()
strain_py4dstem, details = py4dstem_strain(
    datacube, reference=reference, return_details=True
)
strain_py4dstem.name = "strain_py4dstem"
print(
    f"py4DSTEM pipeline: {time.perf_counter() - t0:.1f} s, "
    f"median {details['peaks_per_pattern_median']:.0f} peaks per pattern, "
    f"lattice fitted at {details['valid_fraction']:.0%} of positions"
)
"""
    ),
    _md(
        """
The CC-ST-AE trains on the same DataCube. `fit_strain(datacube,
reference=reference, **options)` does the same in one call; the estimator
object keeps the model, its training history and what it fitted. Fewer epochs
than the default keep this notebook short; every other option is the default.
After training, `fit` checks that the encoder follows known warps of its input
(its "sensitivity"; an encoder that never locked on scores about 0) and trains
again from a new initialisation if it does not; `fitted_["attempts"]` records
every attempt.
"""
    ),
    _code(
        """
t0 = time.perf_counter()
model = CCSTAE(epochs=8)  # fewer epochs than the default, for a short run
model.fit(datacube, seed=SEED, device="cpu", progress=False)
strain_ccstae = model.strain_map(datacube, reference=reference)
fitted = model.fitted_
print(
    f"CC-ST-AE: {time.perf_counter() - t0:.1f} s, {fitted['epochs_run']} epochs, "
    f"detected symmetry {fitted['symmetry']}, "
    f"{len(fitted['spots'] or [])} spots found on the base"
)
print(
    f"lock-on: {len(fitted['attempts'])} attempt(s), encoder sensitivity "
    f"{fitted['encoder_sensitivity']['mean']:.2f}"
)
print("slices:", strain_ccstae.slicelabels)

fig, ax = plt.subplots(figsize=(4, 2.6))
ax.semilogy([h["loss"] for h in model.history_], "o-")
ax.set_xlabel("epoch")
ax.set_ylabel("training loss")
plt.tight_layout()
plt.show()
"""
    ),
    _md(
        """
## 4. The maps, with py4DSTEM's own plot

All three `RealSlice`s carry `e_xx, e_yy, e_xy, theta, mask` in py4DSTEM's
conventions, so `show_strain` draws them all (`vrange` in percent,
`vrange_theta` in degrees).
"""
    ),
    _code(
        """
for title, rs in (
    ("ground truth", truth),
    ("py4DSTEM StrainMap", strain_py4dstem),
    ("CC-ST-AE", strain_ccstae),
):
    fig, _ = py4DSTEM.visualize.show_strain(
        rs,
        vrange=[-3, 3],
        vrange_theta=[-6, 6],
        show_gvects=False,
        figsize=(7, 6),
        returnfig=True,
    )
    fig.suptitle(title)
    plt.show()
"""
    ),
    _md(
        """
## 5. Errors against the truth

Mean absolute error over all scan positions (x1e-3; theta in degrees, wrapped
modulo the 4-fold symmetry of Si). The truth is the package's rotation-free
strain; py4DSTEM's infinitesimal formulas differ from it by a small
rotation-dependent term, so py4DSTEM is also scored against its own formulas
applied to the exact lattice (see `docs/conventions.md`).
"""
    ),
    _code(
        """
errors = {
    "CC-ST-AE": strain_errors(strain_ccstae, truth, symmetry=4),
    "py4DSTEM": strain_errors(strain_py4dstem, truth, symmetry=4),
    "py4DSTEM vs its own formulas": strain_errors(
        strain_py4dstem,
        truth,
        symmetry=4,
        truth_values=truth_transform(truth).strain_linear(),
    ),
}
print(f"{'method':<30}{'e_xx':>7}{'e_yy':>7}{'e_xy':>7}{'theta':>8}{'valid':>7}")
for name, e in errors.items():
    print(
        f"{name:<30}{e['mae_e_xx'] * 1e3:7.2f}{e['mae_e_yy'] * 1e3:7.2f}"
        f"{e['mae_e_xy'] * 1e3:7.2f}{e['mae_theta_deg']:8.3f}{e['valid_fraction']:7.2f}"
    )

keys = ("e_xx", "e_yy", "e_xy")
fig, ax = plt.subplots(2, 3, figsize=(9, 5.6))
methods = (("py4DSTEM", strain_py4dstem), ("CC-ST-AE", strain_ccstae))
for row, (name, rs) in enumerate(methods):
    for col, k in enumerate(keys):
        err = 100 * (rs.get_slice(k).data - truth.get_slice(k).data)
        im = ax[row, col].imshow(err, cmap="RdBu_r", vmin=-0.5, vmax=0.5)
        ax[row, col].set_title(f"{k} error (%)" if row == 0 else "")
        ax[row, col].set_xticks([])
        ax[row, col].set_yticks([])
    ax[row, 0].set_ylabel(name)
fig.colorbar(im, ax=ax, shrink=0.6)
plt.show()
"""
    ),
    _md(
        """
## 6. One EMD file for everything

Graft the truth and both strain maps into the DataCube's tree and save the
tree with `py4DSTEM.save` (`mode="o"` overwrites an existing file; `"w"`
refuses to, `"a"` appends). Only plain py4DSTEM/emdfile objects are saved, so
the file reads back with py4DSTEM alone. (`py4dstem_ccstae.io.save_emd` does
the same write atomically.)
"""
    ),
    _code(
        """
path = Path("mixed_workflow.h5")
for node in (truth, strain_py4dstem, strain_ccstae):
    datacube.tree(graft=node)
py4DSTEM.save(path, datacube, mode="o")
print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
py4DSTEM.print_h5_tree(path)
"""
    ),
    _code(
        """
root = f"{datacube.root.name}/{datacube.name}"
back_dc = py4DSTEM.read(path, datapath=root, tree=False)
back_ccstae = py4DSTEM.read(path, datapath=f"{root}/{strain_ccstae.name}")
back_py4dstem = py4DSTEM.read(path, datapath=f"{root}/{strain_py4dstem.name}")

assert np.array_equal(back_dc.data, datacube.data)
assert back_dc.calibration.get_Q_pixel_size() == datacube.calibration.get_Q_pixel_size()
for original, back in ((strain_ccstae, back_ccstae), (strain_py4dstem, back_py4dstem)):
    assert back.slicelabels == original.slicelabels
    assert np.array_equal(back.data, original.data)
print("read back:", type(back_dc).__name__, back_dc.data.shape)
print("           ", back_ccstae.name, back_ccstae.slicelabels)
print("           ", back_py4dstem.name, back_py4dstem.slicelabels)
print("CC-ST-AE options stored with the map:", back_ccstae.metadata["ccstae"]["config"])
print(f"whole notebook: {time.perf_counter() - t_start:.0f} s")
"""
    ),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {
        "name": KERNEL,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def _strip_volatile(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-execute", action="store_true", help="write without outputs")
    args = parser.parse_args(argv)
    nb = build()
    if not args.no_execute:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            execute(nb, Path(tmp))
        print(f"executed in {time.perf_counter() - t0:.0f} s (wall time, this machine)")
    _strip_volatile(nb)
    nbformat.validate(nb)
    nbformat.write(nb, args.out)
    print(f"written: {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return args.out


if __name__ == "__main__":
    main()
