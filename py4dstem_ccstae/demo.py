"""The demo: a simulated noisy polycrystal mapped by py4DSTEM and the CC-ST-AE.

What ``py4dstem-ccstae demo`` runs (the command line prints, this computes and
writes): :func:`demo_output` checks ``DIR/demo.h5`` before any work,
:func:`run_demo` simulates a Si polycrystal with ground truth, adds the
paper's background noise, maps it with py4DSTEM's own strain pipeline and a
CC-ST-AE trained on it and scores both against the truth, and
:func:`write_demo` writes one EMD file (DataCube, truth, both strain maps, the
model) and ``show_strain`` PNGs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

__all__ = ["DEMO_FILE", "DemoResult", "demo_output", "run_demo", "write_demo"]

if TYPE_CHECKING:  # annotations only
    from py4DSTEM import DataCube, RealSlice

    from .estimator import CCSTAE


#: The demo's EMD file, in its output folder.
DEMO_FILE = "demo.h5"


@dataclass
class DemoResult:
    """What :func:`run_demo` computed.

    Attributes
    ----------
    datacube : py4DSTEM.DataCube
        The noisy simulated scan both methods mapped.
    truth : py4DSTEM.RealSlice
        Its ground truth (``polycrystal``'s: strain, theta, grains, reference).
    baseline : py4DSTEM.RealSlice
        py4DSTEM's strain map (:func:`~py4dstem_ccstae.baseline.py4dstem_strain`).
    strain : py4DSTEM.RealSlice
        The CC-ST-AE's strain map.
    model : CCSTAE
        The fitted model.
    errors : dict
        :func:`~py4dstem_ccstae.metrics.strain_errors` of ``"ccstae"`` and
        ``"py4dstem"`` against the rotation-free truth, and of
        ``"py4dstem_linear"`` against the truth in py4DSTEM's own (linear)
        strain formulas: MAE as fractions, theta in degrees, valid fraction.
    """

    datacube: DataCube
    truth: RealSlice
    baseline: RealSlice
    strain: RealSlice
    model: CCSTAE
    errors: dict[str, dict]


def demo_output(out: str | os.PathLike, *, force: bool = False) -> Path:
    """The demo's EMD file ``out/demo.h5``, its folder created.

    Raises
    ------
    FileExistsError
        The file exists and ``force`` is False (checked before any work).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emd = out / DEMO_FILE
    if emd.exists() and not force:
        raise FileExistsError(f"{emd} exists; pass --force to overwrite")
    return emd


def run_demo(
    scan: int = 48,
    noise: float = 25.0,
    *,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> DemoResult:
    """Simulate a noisy Si polycrystal and map it with py4DSTEM and the CC-ST-AE.

    Parameters
    ----------
    scan : int
        Scan size ``scan x scan`` (patterns are 128 x 128).
    noise : float
        Background noise (%) of :func:`~py4dstem_ccstae.noise.add_background_noise`
        (Poisson, 1e5 electrons per probe).
    seed : int
        Seed of the simulation, the noise and the training.
    device : {"auto", "cpu", "cuda"}
        Training device.
    progress : bool
        Show per-epoch training progress.
    report : callable, optional
        Called with a line on each step as it starts (e.g. ``print``).

    Returns
    -------
    DemoResult
        Reference region: the truth's zero-strain grain.
    """
    from .baseline import py4dstem_strain
    from .estimator import CCSTAE
    from .metrics import strain_errors
    from .simulate import add_background_noise, polycrystal, truth_transform

    say = report or (lambda line: None)
    say(f"[1/5] simulating a {scan}x{scan} Si polycrystal (128x128 patterns)")
    clean, truth = polycrystal(scan_shape=(scan, scan), seed=seed)
    say(f"[2/5] adding {noise:g} % Poisson background noise (1e5 e-/probe)")
    dc = add_background_noise(clean, noise, seed=seed)
    ref = truth.get_slice("reference").data.astype(bool)
    say("[3/5] running py4DSTEM's strain pipeline (disk detection, lattice fit)")
    base, _ = py4dstem_strain(dc, reference=ref, return_details=True)
    say("[4/5] training the CC-ST-AE (CPU is enough; progress per epoch)")
    model = CCSTAE()
    inputs = model.prepare(dc)  # read once, for fit and the map
    model.fit(inputs, seed=seed, device=device, progress=progress)
    ours = model.strain_map(inputs, reference=ref)
    lin = truth_transform(truth).strain_linear()
    errors = {
        "ccstae": strain_errors(ours, truth),
        "py4dstem": strain_errors(base, truth),
        "py4dstem_linear": strain_errors(base, truth, truth_values=lin),
    }
    return DemoResult(dc, truth, base, ours, model, errors)


def write_demo(
    result: DemoResult,
    emd: str | os.PathLike,
    *,
    force: bool = False,
    report: Callable[[str], None] | None = None,
) -> str:
    """Write the demo: one EMD file and ``strain_{truth,py4dstem,ccstae}.png`` beside it.

    The EMD file holds the DataCube (``datacube``) with the truth and both
    strain maps in its tree, and the fitted model appended (plain py4DSTEM
    reads the maps, :meth:`CCSTAE.load <py4dstem_ccstae.CCSTAE.load>` the
    model). PNGs: :func:`py4DSTEM.visualize.show_strain`, strain -3..3 %,
    theta -6..6 deg.

    Parameters
    ----------
    result : DemoResult
    emd : str or PathLike
        The EMD file (:func:`demo_output`).
    force : bool
        Overwrite an existing file.
    report : callable, optional
        Called with a line when the writing starts.

    Returns
    -------
    str
        The datapath of the CC-ST-AE's strain map in ``emd``.
    """
    import matplotlib.pyplot as plt
    import py4DSTEM

    from .io import save_emd

    emd = Path(emd)
    if report is not None:
        report(f"\n[5/5] writing {emd} and figures")
    dc, truth = result.datacube, result.truth
    dc.name = "datacube"
    truth.name = "truth"
    for node in (truth, result.baseline, result.strain):
        dc.tree(graft=node)
    save_emd(emd, dc, overwrite=force)
    result.model.save(emd, append=True)  # the model next to the DataCube, same file
    maps = (("truth", truth), ("py4dstem", result.baseline), ("ccstae", result.strain))
    for name, rs in maps:
        fig, _ = py4DSTEM.visualize.show_strain(
            rs, vrange=[-3, 3], vrange_theta=[-6, 6], show_gvects=False, returnfig=True
        )
        fig.savefig(emd.parent / f"strain_{name}.png", dpi=80)
        plt.close("all")
    return f"{dc.root.name}/{dc.name}/{result.strain.name}"
