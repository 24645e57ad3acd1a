"""Draw the conventions figure of the docs: ``docs/img/conventions.png``.

Run from the repository root::

    python docs/scripts/conventions_figure.py

Panel (a) is a simulated, noise-free Si [001] pattern
(``py4dstem_ccstae.simulate.polycrystal``, one unstrained grain, seed 0) shown
as py4DSTEM shows patterns (``qx`` = rows, downwards; ``qy`` = columns, to the
right) with the two shortest lattice vectors ``g1, g2``. Panels (b)-(d) move
the kinematic spots of the same lattice (``simulate.material_spots``) by
``LatticeTransform.from_strain`` with one positive component each,
exaggerated so that the motion is visible. Every sentence printed on the
figure is checked by an assertion below before the file is written, so the
figure cannot contradict the package's own strain code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from py4dstem_ccstae import LatticeTransform  # noqa: E402
from py4dstem_ccstae.simulate import material_spots, polycrystal  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "conventions.png"

#: Exaggerated strain and rotation used in panels (b)-(d).
E_SHOW = 0.12
THETA_SHOW_DEG = 10.0
#: Largest scattering vector drawn in panels (b)-(d), A^-1.
K_MAX = 1.1


def _primitive(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shortest vector and the shortest one not collinear with it."""
    n = np.hypot(g[:, 0], g[:, 1])
    order = np.argsort(n, kind="stable")
    g1 = g[order[0]]
    for i in order[1:]:
        cross = abs(g1[0] * g[i, 1] - g1[1] * g[i, 0]) / (n[order[0]] * n[i])
        if cross > 0.3:
            return g1, g[i]
    raise RuntimeError("no two non-collinear lattice vectors")


def _screen_cross(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """z of ``g x h`` on screen (x = qy to the right, y = -qx upwards); < 0: clockwise."""
    gx, gy = g[..., 1], -g[..., 0]
    hx, hy = h[..., 1], -h[..., 0]
    return gx * hy - gy * hx


def _check_claims(g: np.ndarray) -> None:
    """Assert every statement written on the figure."""
    exx = LatticeTransform.from_strain(e_xx=E_SHOW)
    m = exx.apply(g)
    on_qx = np.abs(g[:, 0]) > 1e-9
    assert np.all(np.abs(m[on_qx, 0]) < np.abs(g[on_qx, 0])), (
        "e_xx>0: spots move in along qx"
    )
    assert np.allclose(m[:, 1], g[:, 1]), "e_xx>0: qy unchanged"
    assert exx.F[0, 0] > 1.0, "e_xx>0: crystal stretched along Rx"

    exy = LatticeTransform.from_strain(e_xy=E_SHOW)
    d_plus, d_minus = np.array([[1.0, 1.0]]), np.array([[1.0, -1.0]])
    assert np.hypot(*exy.apply(d_plus)[0]) < np.hypot(*d_plus[0]), "e_xy>0: qx=qy shrinks"
    assert np.hypot(*exy.apply(d_minus)[0]) > np.hypot(*d_minus[0]), "e_xy>0: qx=-qy grows"

    rot = LatticeTransform.from_strain(theta=np.radians(THETA_SHOW_DEG))
    assert np.all(_screen_cross(g, rot.apply(g)) < 0), "theta>0: clockwise on screen"
    _, phi = rot.polar()
    assert phi < 0, "theta>0: lattice turns from +qy toward +qx"
    assert np.isclose(rot.strain()["theta"], np.radians(THETA_SHOW_DEG))


def _spot_panel(ax, g: np.ndarray, T: LatticeTransform, title: str, note: str) -> None:
    m = T.apply(g)
    # screen: x = qy (right), y = qx (down; the axis is inverted below)
    ax.scatter(
        g[:, 1], g[:, 0], s=60, facecolors="none", edgecolors="0.5", label="reference"
    )
    ax.scatter(m[:, 1], m[:, 0], s=18, color="C3", label="strained")
    for a, b in zip(g, m, strict=True):
        ax.annotate(
            "",
            xy=(b[1], b[0]),
            xytext=(a[1], a[0]),
            arrowprops=dict(arrowstyle="->", color="C3", lw=0.8),
        )
    lim = 1.15 * K_MAX
    ax.set_xlim(-lim, lim)
    ax.set_ylim(lim, -lim)  # qx downwards, as in imshow
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.5, zorder=0)
    ax.axvline(0, color="0.85", lw=0.5, zorder=0)
    ax.set_xlabel("qy (A$^{-1}$), increasing to the right")
    ax.set_ylabel("qx (A$^{-1}$), increasing downward")
    ax.set_title(title, fontsize=10)
    ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=7.5, va="bottom")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG path ({OUT})")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)

    spots = material_spots("Si", K_MAX)
    g = spots["g"]
    g1, g2 = _primitive(g)
    _check_claims(g)

    datacube, _ = polycrystal(
        scan_shape=(2, 2), pattern_shape=(128, 128), material="Si", num_grains=1, seed=0
    )
    cal = datacube.calibration
    qpix = float(cal.get_Q_pixel_size())
    qx0, qy0 = (float(np.asarray(v)[0, 0]) for v in cal.get_origin())
    pattern = np.asarray(datacube.data[0, 0], dtype=float)

    fig, axes = plt.subplots(2, 2, figsize=(9.0, 9.0))
    ax = axes[0, 0]
    ax.imshow(np.sqrt(pattern), cmap="gray")
    for name, v, color in (("g1", g1, "C1"), ("g2", g2, "C0")):
        tip = (qx0 + v[0] / qpix, qy0 + v[1] / qpix)  # (row, column)
        ax.annotate(
            "",
            xy=(tip[1], tip[0]),
            xytext=(qy0, qx0),
            arrowprops=dict(arrowstyle="-|>", color=color, lw=1.5),
        )
        ax.text(tip[1] + 3, tip[0] + 3, name, color=color, fontsize=10, weight="bold")
    ax.annotate(
        "", xy=(10, 30), xytext=(10, 6), arrowprops=dict(arrowstyle="-|>", color="w")
    )
    ax.text(13, 30, "+qx", color="w", fontsize=9)
    ax.annotate(
        "", xy=(34, 6), xytext=(10, 6), arrowprops=dict(arrowstyle="-|>", color="w")
    )
    ax.text(30, 15, "+qy", color="w", fontsize=9)
    ax.set_xlabel("qy: detector column (pixels)")
    ax.set_ylabel("qx: detector row (pixels)")
    ax.set_title("(a) simulated Si [001] pattern, DataCube[rx, ry]", fontsize=10)

    _spot_panel(
        axes[0, 1],
        g,
        LatticeTransform.from_strain(e_xx=E_SHOW),
        f"(b) e_xx = +{E_SHOW:g} (exaggerated)",
        "spots move in along qx;\ncrystal stretched along Rx (tension)",
    )
    _spot_panel(
        axes[1, 0],
        g,
        LatticeTransform.from_strain(e_xy=E_SHOW),
        f"(c) e_xy = +{E_SHOW:g} (tensor shear)",
        "spots move in along qx = qy\nand out along qx = -qy",
    )
    _spot_panel(
        axes[1, 1],
        g,
        LatticeTransform.from_strain(theta=np.radians(THETA_SHOW_DEG)),
        f"(d) theta = +{THETA_SHOW_DEG:g} deg",
        "lattice turns from +qy toward +qx:\nclockwise as displayed (qx down, qy right)",
    )
    axes[0, 1].legend(loc="upper right", fontsize=7.5)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    print(f"written: {args.out}")
    return args.out


if __name__ == "__main__":
    main()
