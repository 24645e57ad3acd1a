"""The strain map's frames: every position's strain relative to a reference lattice.

After :meth:`~py4dstem_ccstae.CCSTAE.predict` every valid position has the
lattice matrix ``A`` of its pattern relative to its own base. This stage
turns them into strain relative to the reference region:

- classes whose bases show one lattice (registered at fit, ``frames[k] =
  M_k`` with ``g_k = M_k g_anchor``) are put in the anchor base's frame
  (``A @ M_k``) and made relative to the median lattice of the reference
  region's positions among them (py4DSTEM's ``get_strain(gvects=mask)``
  convention), the rotation reduced modulo the lattice symmetry when several
  bases are registered at different orientations;
- every other class (another phase, or all classes with ``frame="class"``)
  is relative to its own positions inside the reference region (none there:
  all its positions).

Strain as :meth:`~py4dstem_ccstae.affine.LatticeTransform.strain`: fractions,
``e_xy`` the tensor shear, ``theta`` in radians with py4DSTEM's sign.
"""

from __future__ import annotations

import warnings

import numpy as np

from .affine import STRAIN_KEYS, LatticeTransform, reduce_rotation

__all__ = ["relative_strain"]


def relative_strain(
    pred, reference: np.ndarray, frames: list, symmetry: int, frame: str, warn: bool
) -> tuple[dict, dict]:
    """Every valid position's strain relative to the reference lattice.

    Parameters
    ----------
    pred : Prediction or mapping
        ``A`` (Rx, Ry, 2, 2), ``class`` (Rx, Ry), ``valid`` (Rx, Ry).
    reference : ndarray of bool (Rx, Ry)
        The reference region.
    frames : list of (2 x 2 or None)
        Per base, its lattice relative to the anchor base (None: not
        registered, another lattice).
    symmetry : int
        The lattice's rotation order.
    frame : {"auto", "common", "class"}
        As :meth:`~py4dstem_ccstae.CCSTAE.strain_map`; ``"common"`` raises
        ValueError when no reference position is in a registered class.
    warn : bool
        Warn when a class has no position in the reference region (the user
        gave one).

    Returns
    -------
    strain : dict of ndarray (Rx, Ry)
        ``e_xx, e_yy, e_xy, theta``; NaN where not valid.
    class_reference : dict
        Per class: ``positions`` of its reference, ``source`` (``"reference"``
        or ``"class"``) and ``frame`` (``"common"`` or ``"own"``).
    """
    shape = np.shape(pred["class"])
    cls, valid = pred["class"], pred["valid"]
    rel = {k: np.full(shape, np.nan) for k in STRAIN_KEYS}
    class_reference = {}
    # classes whose bases show one lattice: one common frame (the anchor
    # base's), relative to the reference region's median lattice there
    present = [int(k) for k in np.unique(cls[valid])]
    shared = [k for k in present if frames[k] is not None] if frame != "class" else []
    ref_shared = reference & valid & np.isin(cls, shared)
    if frame == "common" and not ref_shared.any():
        raise ValueError(
            "frame='common': no position of the reference region belongs to a "
            "class with a registered frame (fitted_['base_frames'])"
        )
    if not ref_shared.any():
        shared = []
    A = np.array(pred["A"], dtype=np.float64)
    if shared:
        in_shared = np.isin(cls, shared) & valid
        for k in shared:
            rows = (cls == k) & valid
            A[rows] = A[rows] @ np.asarray(frames[k])
        Tc = LatticeTransform(A)
        Tc = Tc.relative_to(Tc.reference_from_mask(ref_shared))
        if len(shared) > 1:
            # bases registered at different orientations: the measured
            # lattice's smallest rotation (strain in the reference's axes)
            Tc = reduce_rotation(Tc, symmetry)
        strain_c = Tc.strain()
        for key in STRAIN_KEYS:
            rel[key][in_shared] = strain_c[key][in_shared]
        for k in shared:
            class_reference[k] = {
                "positions": int(ref_shared.sum()),
                "source": "reference",
                "frame": "common",
            }
    T = LatticeTransform(pred["A"])
    # the other classes are relative to their own reference: their bases
    # show another lattice, whose transforms are not comparable
    for k in present:
        if k in shared:
            continue
        members = (cls == k) & valid
        ref_k = reference & members
        source = "reference"
        if not ref_k.any():
            if warn:
                warnings.warn(
                    f"strain_map: no position of class {k} lies in the reference "
                    f"region; its strain is relative to the median over its own "
                    f"{int(members.sum())} positions",
                    UserWarning,
                    stacklevel=3,
                )
            ref_k, source = members, "class"
        strain_k = T.relative_to(T.reference_from_mask(ref_k)).strain()
        for key in STRAIN_KEYS:
            rel[key][members] = strain_k[key][members]
        class_reference[int(k)] = {
            "positions": int(ref_k.sum()),
            "source": source,
            "frame": "own",
        }
    return rel, class_reference
