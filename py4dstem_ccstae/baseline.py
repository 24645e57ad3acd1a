"""py4DSTEM's own strain pipeline, automated: no plots, no manual steps.

:func:`py4dstem_strain` runs the correlation pipeline a careful py4DSTEM user
runs by hand — probe template, Bragg disk detection, origin fit, basis vectors
from the Bragg vector map, lattice fit, ``get_strain`` against a reference
region — and returns a plain ``RealSlice`` in the same schema as ours
(``e_xx, e_yy, e_xy, theta, mask``), which saves to EMD and reads back without
this package.

Automation notes (py4DSTEM 0.14.18):

* ``find_Bragg_disks`` defaults (``minPeakSpacing=60``, ``edgeBoundary=20``)
  find one peak per pattern on small detectors; spacing is set from the disk
  radius instead.
* ``choose_basis_vectors`` guesses a non-primitive second vector on hexagonal
  lattices; the primitive basis is chosen here from its Bragg-vector-map maxima
  (the shortest vector, then the shortest non-collinear one).
* Several steps plot unconditionally; figures are suppressed and closed.
* The origin fit would overwrite the input's calibration: the pipeline works on
  a DataCube sharing the data but holding a copy of the calibration.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np

from ._validation import check_datacube, check_reference

__all__ = ["py4dstem_strain", "DEFAULT_BASELINE_PARAMS"]

#: Parameters of the pipeline, tuned once on noise-free simulated data and kept
#: fixed across noise levels (see docs). Radii and spacings in pixels; ``None``
#: means derived from the measured probe radius.
DEFAULT_BASELINE_PARAMS = dict(
    probe_radius=None,
    probe_width=1.0,
    corr_power=1.0,
    sigma=0.0,
    subpixel="multicorr",
    upsample_factor=16,
    min_relative_intensity=0.005,
    min_peak_spacing=None,
    edge_boundary=2,
    max_num_peaks=100,
    max_peak_spacing=None,
    origin="fit",
    origin_fit="plane",
)


@contextlib.contextmanager
def _quiet_plots():
    """Suppress py4DSTEM's unconditional figures and ``plt.show`` calls."""
    import matplotlib.pyplot as plt

    show = plt.show
    plt.show = lambda *a, **k: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        plt.show = show
        plt.close("all")


def _primitive_basis(sm, noncollinear: float = 0.3) -> tuple[int, int, int]:
    """Indices (origin, g1, g2) of a primitive basis among ``sm.g`` maxima."""
    gx, gy = np.asarray(sm.g["x"], float), np.asarray(sm.g["y"], float)
    ox, oy = sm.origin
    i0 = int(np.argmin(np.hypot(gx - ox, gy - oy)))
    v = np.stack([gx - gx[i0], gy - gy[i0]], 1)
    n = np.hypot(v[:, 0], v[:, 1])
    n[i0] = np.inf
    i1 = int(np.argmin(n))
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = np.abs(v[i1, 0] * v[:, 1] - v[i1, 1] * v[:, 0]) / (n * n[i1])
    n2 = np.where(cross > noncollinear, n, np.inf)
    i2 = int(np.argmin(n2))
    if not np.isfinite(n2[i2]):
        raise RuntimeError("py4DSTEM found no two non-collinear lattice vectors")
    return i0, i1, i2


def _probe_radius(datacube) -> float:
    r = datacube.calibration.get_convergence_semiangle_pixels()
    if r is not None and np.isfinite(r) and r > 0:
        return float(r)
    from py4DSTEM.process.calibration import get_probe_size

    n = min(datacube.data.shape[0] * datacube.data.shape[1], 256)
    idx = np.linspace(0, datacube.data.shape[0] * datacube.data.shape[1] - 1, n).astype(int)
    flat = datacube.data.reshape(-1, *datacube.data.shape[2:])
    mean_dp = np.mean([np.asarray(flat[i], float) for i in idx], axis=0)
    return float(get_probe_size(mean_dp)[0])


def py4dstem_strain(
    datacube,
    reference: np.ndarray | None = None,
    *,
    coordinate_rotation: float = 0.0,
    return_details: bool = False,
    **params,
):
    """Strain map from py4DSTEM's correlation pipeline.

    Parameters
    ----------
    datacube : py4DSTEM.DataCube
        ``[Rx, Ry, Qx, Qy]``. Its calibration is read (Q pixel size, ellipse,
        Q/R rotation) but never modified. The direct beam must be the
        brightest disk (py4DSTEM's origin and indexing steps assume it).
    reference : ndarray of bool, shape (Rx, Ry), optional
        Reference region: strain is relative to the median lattice there, as
        ``StrainMap.get_strain(gvects=reference)``. ``None``: all positions.
    coordinate_rotation : float
        Degrees, passed to ``get_strain``.
    return_details : bool
        Also return a dict with timings and peak counts.
    **params
        Overrides of :data:`DEFAULT_BASELINE_PARAMS`.

    Returns
    -------
    py4DSTEM.RealSlice
        Slices ``e_xx, e_yy, e_xy, theta, mask`` (fractions, tensor shear,
        radians, ``mask`` 1.0 where py4DSTEM fitted a lattice), named
        ``"py4dstem_strain"``.
    """
    import py4DSTEM
    from py4DSTEM import DataCube, RealSlice

    check_datacube(datacube)
    unknown = set(params) - set(DEFAULT_BASELINE_PARAMS)
    if unknown:
        raise TypeError(f"unknown baseline parameter(s): {sorted(unknown)}")
    p = {**DEFAULT_BASELINE_PARAMS, **params}
    Rx, Ry, Qx, Qy = datacube.data.shape
    if reference is not None:
        reference = check_reference(reference, (Rx, Ry))
    if p["origin"] not in ("fit", "calibration"):
        raise ValueError(f"origin must be 'fit' or 'calibration', got {p['origin']!r}")

    # work on a DataCube sharing the data, with its own calibration copy
    dc = DataCube(
        data=datacube.data, name="baseline", calibration=datacube.calibration.copy()
    )
    radius = p["probe_radius"] or _probe_radius(datacube)
    min_spacing = p["min_peak_spacing"] or 2.0 * radius
    max_peak_spacing = p["max_peak_spacing"] or max(1.5, 0.75 * radius)
    details: dict = {"probe_radius": radius}
    t0 = time.perf_counter()

    with _quiet_plots():
        probe = py4DSTEM.Probe.generate_synthetic_probe(
            radius=radius, width=p["probe_width"], Qshape=(Qx, Qy)
        )
        kernel = probe.get_kernel(
            mode="sigmoid", origin=(Qx / 2, Qy / 2), radii=(radius, 2.5 * radius)
        )
        bv = dc.find_Bragg_disks(
            kernel,
            corrPower=p["corr_power"],
            sigma=p["sigma"],
            subpixel=p["subpixel"],
            upsample_factor=p["upsample_factor"],
            minAbsoluteIntensity=0,
            minRelativeIntensity=p["min_relative_intensity"],
            minPeakSpacing=min_spacing,
            edgeBoundary=p["edge_boundary"],
            maxNumPeaks=p["max_num_peaks"],
        )
        details["find_Bragg_disks_s"] = time.perf_counter() - t0
        npk = np.array([[bv.raw[i, j].data.shape[0] for j in range(Ry)] for i in range(Rx)])
        details["peaks_per_pattern_median"] = float(np.median(npk))
        if p["origin"] == "fit" or dc.calibration.get_origin() is None:
            bv.measure_origin()
            bv.fit_origin(fitfunction=p["origin_fit"], plot=False)
        bv.setcal()
        sm = py4DSTEM.StrainMap(braggvectors=bv)
        kw = dict(minSpacing=min_spacing * 0.75, edgeBoundary=1, maxNumPeaks=100)
        sm.choose_basis_vectors(subpixel="multicorr", **kw)
        i0, i1, i2 = _primitive_basis(sm)
        sm.choose_basis_vectors(index_origin=i0, index_g1=i1, index_g2=i2, **kw)
        sm.set_max_peak_spacing(max_peak_spacing)
        sm.fit_basis_vectors()
        gvects = None if reference is None else reference.astype(bool)
        sm.get_strain(gvects=gvects, coordinate_rotation=coordinate_rotation)
    details["total_s"] = time.perf_counter() - t0

    labels = ("e_xx", "e_yy", "e_xy", "theta", "mask")
    data = np.stack([np.array(sm.get_slice(k).data, dtype=np.float64) for k in labels])
    out = RealSlice(data=data, name="py4dstem_strain", slicelabels=list(labels))
    details["valid_fraction"] = float(np.mean(data[4] > 0))
    if return_details:
        return out, details
    return out
