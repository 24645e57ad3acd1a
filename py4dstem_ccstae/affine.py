"""Torch-free lattice deformation value object and strain conventions.

Every strain, shear and rotation in this package passes through
:class:`LatticeTransform`. It holds one matrix and states which way it maps;
everything else is derived from it.

Coordinates
-----------
Diffraction vectors are column vectors ``g = (qx, qy)`` in calibrated detector
coordinates: ``qx`` is the first detector axis (image rows), ``qy`` the second
(image columns), exactly as py4DSTEM's ``DataCube`` axes ``[Rx, Ry, Qx, Qy]``.
After py4DSTEM's Q/R rotation calibration, ``qx`` is parallel to the real-space
scan axis ``Rx``, so strain components are in scan coordinates.

The matrix
----------
``params`` is the 2x2 *reciprocal-space* matrix ``A`` that maps a reference
lattice vector onto the measured one::

    g_meas = A @ g_ref

It equals py4DSTEM's ``beta`` in ``StrainMap.get_strain`` (py4DSTEM solves
``M @ X = alpha`` with reference vectors as rows of ``M`` and takes
``beta = X.T``), and the real-space deformation gradient is
``F = inv(A).T`` (``r_meas = F @ r_ref``): an expanded diffraction pattern is a
compressed crystal.

Strain definitions
------------------
py4DSTEM's ``StrainMap.get_strain`` formulas, :meth:`LatticeTransform.strain_linear`::

    e_xx  = 1 - A[0, 0]
    e_yy  = 1 - A[1, 1]
    e_xy  = -(A[0, 1] + A[1, 0]) / 2          (tensor shear, not engineering)
    theta = (A[0, 1] - A[1, 0]) / 2           (radians)

These are infinitesimal: a lattice rotated by ``phi`` reports
``e_xx = e_yy = 1 - cos(phi)`` (3.8e-3 at 5 degrees) although it is unstrained.

The package's reported values and the simulator's ground truth,
:meth:`LatticeTransform.strain`, are the same formulas applied after the
rotation is removed exactly. The left polar decomposition ``A = P @ Q`` (``P``
symmetric positive definite, ``Q`` a rotation by ``phi`` from ``+qx`` toward
``+qy``) gives::

    e_xx = 1 - P[0, 0],  e_yy = 1 - P[1, 1],  e_xy = -P[0, 1],  theta = -phi

They equal py4DSTEM's numbers exactly for an unrotated lattice, are valid for
any rotation, and keep py4DSTEM's sign of ``theta`` (a lattice rotated from
``+qx`` toward +qy by ``phi`` gives ``theta = -phi``). In real space
``F = V @ R`` with ``V = inv(P)``, ``R = Q``: ``e = I - inv(V)``, which differs
from the engineering (Biot) strain ``V - I`` (:meth:`LatticeTransform.strain_biot`)
by terms of order ``|e|**2`` (4e-4 at 2 %).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LatticeTransform", "STRAIN_KEYS", "reduce_rotation"]

#: Names of the strain components, in py4DSTEM's slice order.
STRAIN_KEYS = ("e_xx", "e_yy", "e_xy", "theta")


def _as_matrix_stack(params: np.ndarray, name: str = "params") -> np.ndarray:
    a = np.asarray(params, dtype=np.float64)
    if a.ndim < 2 or a.shape[-2:] != (2, 2):
        raise ValueError(f"{name} must have shape (..., 2, 2), got {a.shape}")
    return a


def _rotation(phi: np.ndarray) -> np.ndarray:
    """Rotation matrices by ``phi`` (radians) from +qx toward +qy, shape (..., 2, 2)."""
    c, s = np.cos(phi), np.sin(phi)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


class LatticeTransform:
    """Affine deformation of a crystal lattice, as seen in diffraction.

    Parameters
    ----------
    params : array_like, shape (..., 2, 2)
        Reciprocal-space matrix ``A`` mapping reference lattice vectors onto
        measured ones, ``g_meas = A @ g_ref`` with ``g = (qx, qy)`` columns.
        A leading batch shape (e.g. the scan shape) is allowed; every property
        then returns arrays of that batch shape.

    Notes
    -----
    See the module docstring for all formulas. The object is immutable in
    spirit: methods return new objects.
    """

    __slots__ = ("_A",)

    def __init__(self, params: np.ndarray):
        A = _as_matrix_stack(params)
        if not np.all(np.isfinite(A)):
            raise ValueError("params must be finite")
        det = np.linalg.det(A)
        if np.any(det <= 0):
            raise ValueError(
                "params must have a positive determinant (a lattice cannot be "
                "mirrored or collapsed by strain)"
            )
        self._A = A

    # ------------------------------------------------------------------ build
    @classmethod
    def identity(cls, shape: tuple[int, ...] = ()) -> LatticeTransform:
        """Identity transform with batch shape ``shape``."""
        return cls(np.broadcast_to(np.eye(2), tuple(shape) + (2, 2)).copy())

    @classmethod
    def from_strain(
        cls,
        e_xx: np.ndarray | float = 0.0,
        e_yy: np.ndarray | float = 0.0,
        e_xy: np.ndarray | float = 0.0,
        theta: np.ndarray | float = 0.0,
    ) -> LatticeTransform:
        """Build the transform with the given strain and rotation.

        Parameters
        ----------
        e_xx, e_yy, e_xy : float or ndarray
            Strain in the definition of :meth:`strain` (fractions; ``e_xy``
            the tensor shear).
        theta : float or ndarray
            Rotation in radians with py4DSTEM's sign (``phi = -theta``).

        Returns
        -------
        LatticeTransform
            ``A = (I - E) @ Q(phi)`` with ``E = [[e_xx, e_xy], [e_xy, e_yy]]``;
            its :meth:`strain` returns the inputs (to rounding).
        """
        e_xx, e_yy, e_xy, theta = np.broadcast_arrays(
            *(np.asarray(v, dtype=np.float64) for v in (e_xx, e_yy, e_xy, theta))
        )
        P = np.stack([np.stack([1 - e_xx, -e_xy], -1), np.stack([-e_xy, 1 - e_yy], -1)], -2)
        if np.any(np.linalg.eigvalsh(P) <= 0):
            raise ValueError("strain too large: I - e must be positive definite")
        return cls(P @ _rotation(-theta))

    @classmethod
    def from_deformation_gradient(cls, F: np.ndarray) -> LatticeTransform:
        """Build from the real-space deformation gradient ``F`` (``r_meas = F @ r_ref``)."""
        F = _as_matrix_stack(F, "F")
        return cls(np.swapaxes(np.linalg.inv(F), -1, -2))

    @classmethod
    def from_lattice_vectors(
        cls, g_ref: np.ndarray, g_meas: np.ndarray
    ) -> LatticeTransform:
        """Least-squares transform that maps reference onto measured vectors.

        Parameters
        ----------
        g_ref : ndarray, shape (n, 2)
            Reference vectors as rows ``(qx, qy)``, n >= 2, not collinear.
        g_meas : ndarray, shape (..., n, 2)
            Measured vectors, matching rows.
        """
        g_ref = np.asarray(g_ref, dtype=np.float64)
        g_meas = np.asarray(g_meas, dtype=np.float64)
        if g_ref.ndim != 2 or g_ref.shape[1] != 2 or g_ref.shape[0] < 2:
            raise ValueError(f"g_ref must have shape (n>=2, 2), got {g_ref.shape}")
        if g_meas.shape[-2:] != g_ref.shape:
            raise ValueError(
                f"g_meas must have shape (..., {g_ref.shape[0]}, 2), got {g_meas.shape}"
            )
        pinv = np.linalg.pinv(g_ref)  # (2, n)
        X = pinv @ g_meas  # rows: g_ref @ X = g_meas  ->  A = X.T
        return cls(np.swapaxes(X, -1, -2))

    # ------------------------------------------------------------- properties
    @property
    def params(self) -> np.ndarray:
        """Reciprocal-space matrix ``A`` (``g_meas = A @ g_ref``), shape (..., 2, 2)."""
        return self._A.copy()

    @property
    def shape(self) -> tuple[int, ...]:
        """Batch shape."""
        return self._A.shape[:-2]

    @property
    def F(self) -> np.ndarray:
        """Real-space deformation gradient ``inv(A).T`` (``r_meas = F @ r_ref``)."""
        return np.swapaxes(np.linalg.inv(self._A), -1, -2)

    @property
    def beta(self) -> np.ndarray:
        """py4DSTEM's ``beta`` matrix of ``get_strain`` (identical to ``params``)."""
        return self.params

    @property
    def inverse(self) -> LatticeTransform:
        """Transform mapping measured vectors back onto the reference."""
        return LatticeTransform(np.linalg.inv(self._A))

    def polar(self) -> tuple[np.ndarray, np.ndarray]:
        """Left polar decomposition of the reciprocal matrix, ``A = P @ Q(phi)``.

        Returns
        -------
        P : ndarray, shape (..., 2, 2)
            Symmetric positive-definite reciprocal stretch (``inv(V)`` of the
            real-space ``F = V @ R``).
        phi : ndarray, shape (...)
            Lattice rotation in radians from +qx toward +qy, in (-pi, pi].
        """
        A = self._A
        # for det(A) > 0 the closest rotation has this angle
        phi = np.arctan2(A[..., 1, 0] - A[..., 0, 1], A[..., 0, 0] + A[..., 1, 1])
        P = A @ np.swapaxes(_rotation(phi), -1, -2)
        P = 0.5 * (P + np.swapaxes(P, -1, -2))
        return P, phi

    def strain(self) -> dict[str, np.ndarray]:
        """Strain and rotation: py4DSTEM's formulas with the rotation removed exactly.

        Returns
        -------
        dict
            ``e_xx, e_yy, e_xy`` (fractions; ``e_xy`` tensor shear) and
            ``theta`` (radians, py4DSTEM sign), each of the batch shape.
        """
        P, phi = self.polar()
        return {
            "e_xx": 1.0 - P[..., 0, 0],
            "e_yy": 1.0 - P[..., 1, 1],
            "e_xy": -P[..., 0, 1],
            "theta": -phi,
        }

    def strain_biot(self) -> dict[str, np.ndarray]:
        """Engineering (Biot) strain ``V - I`` of ``F = V @ R`` and ``theta``."""
        P, phi = self.polar()
        V = np.linalg.inv(P)
        return {
            "e_xx": V[..., 0, 0] - 1.0,
            "e_yy": V[..., 1, 1] - 1.0,
            "e_xy": V[..., 0, 1].copy(),
            "theta": -phi,
        }

    def strain_linear(self) -> dict[str, np.ndarray]:
        """py4DSTEM's infinitesimal strain from ``beta = A`` (see module docs)."""
        A = self._A
        return {
            "e_xx": 1.0 - A[..., 0, 0],
            "e_yy": 1.0 - A[..., 1, 1],
            "e_xy": -(A[..., 0, 1] + A[..., 1, 0]) / 2.0,
            "theta": (A[..., 0, 1] - A[..., 1, 0]) / 2.0,
        }

    # ------------------------------------------------------------- operations
    def __matmul__(self, other: LatticeTransform) -> LatticeTransform:
        """Composition: ``(self @ other)`` applies ``other`` first, then ``self``."""
        if not isinstance(other, LatticeTransform):
            return NotImplemented
        return LatticeTransform(self._A @ other._A)

    def __getitem__(self, index) -> LatticeTransform:
        return LatticeTransform(self._A[index])

    def apply(self, g: np.ndarray) -> np.ndarray:
        """Map reference vectors ``g`` (rows ``(qx, qy)``, (..., n, 2)) to measured ones."""
        g = np.asarray(g, dtype=np.float64)
        return g @ np.swapaxes(self._A, -1, -2)

    def relative_to(self, reference: LatticeTransform) -> LatticeTransform:
        """This transform expressed relative to ``reference``: ``A @ inv(A_ref)``.

        ``reference`` must have batch shape () or the same batch shape.
        """
        if not isinstance(reference, LatticeTransform):
            raise TypeError("reference must be a LatticeTransform")
        return LatticeTransform(self._A @ np.linalg.inv(reference._A))

    def reference_from_mask(self, mask: np.ndarray) -> LatticeTransform:
        """Median transform over a boolean mask of the batch shape.

        Mirrors py4DSTEM's ``get_strain(gvects=mask)``, which takes the median
        lattice over the masked scan positions. The element-wise median of the
        matrices is used (the median of each lattice vector component).
        """
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise ValueError(
                f"mask must have the batch shape {self.shape}, got {mask.shape}"
            )
        if mask.dtype != bool:
            raise TypeError(f"mask must be boolean, got dtype {mask.dtype}")
        if not mask.any():
            raise ValueError("mask selects no position")
        return LatticeTransform(np.median(self._A[mask], axis=0))

    def __repr__(self) -> str:
        if self.shape == ():
            s = self.strain()
            body = ", ".join(f"{k}={float(v):+.5f}" for k, v in s.items())
            return f"LatticeTransform({body})"
        return f"LatticeTransform(shape={self.shape})"


def reduce_rotation(T: LatticeTransform, symmetry: int) -> LatticeTransform:
    """``T @ R(2 pi j / symmetry)`` with the smallest rotation, per position.

    A lattice with ``symmetry``-fold rotation symmetry maps onto itself under
    ``R(2 pi j / n)``, so ``T`` and ``T @ R`` describe the same measured
    lattice; the one whose rotation lies in ``[-pi / n, pi / n)`` is the one
    whose strain components are in the reference's axes.
    """
    n = max(int(symmetry), 1)
    A = T.params
    best, best_abs = A, np.abs(T.strain()["theta"])
    for j in range(1, n):
        Aj = A @ _rotation(2 * np.pi * j / n)
        th = np.abs(LatticeTransform(Aj).strain()["theta"])
        better = th < best_abs
        best = np.where(better[..., None, None], Aj, best)
        best_abs = np.where(better, th, best_abs)
    return LatticeTransform(best)
