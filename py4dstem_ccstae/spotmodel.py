"""The spot model: what the per-pattern refinement compares every pattern with.

A value object (:class:`SpotModel`), fitted after training from the learned
bases and the training patterns aligned to them, saved with the model, and
used by prediction. It is not part of the network: its arrays are not
``nn.Module`` buffers and no gradient reaches them.

Per base ``k`` it holds the spots (offsets from the pattern centre found on
the base, :func:`~py4dstem_ccstae.spotfit.find_spots`), the compared radius
(shared by all bases: the probe sets the disk size), the spot patches the
refinement moves rigidly (:func:`~py4dstem_ccstae.spotfit.refine_spots`)
and the static background removed before the comparison
(:func:`~py4dstem_ccstae.spotfit.pattern_background`).

Conventions: spots are ``(row, column)`` offsets from the pattern centre
``(S - 1) / 2`` in model pixels of the encoder's size ``S``; the radius is in
the same pixels. The refinement may work on larger patterns of the same field
of view (option ``refine_size``): ``scale = refine_size / S``, and patches
and background are stored at ``refine_size``. A base with fewer than two
spots (vacuum, amorphous) has ``None`` spots and no patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .spotfind import find_spots, near_rotation, register_spots
from .spotfit import refine_spots
from .spotpatch import base_patches, pattern_background

__all__ = ["SpotModel", "class_groups", "resize_bases"]

#: Keys of the spot model's arrays in a saved model's state (the names the
#: network's buffers had before the spot model was its own object, so files of
#: either version read the same).
STATE_KEYS = ("spot_patches", "refine_background")


def resize_bases(bases: torch.Tensor, size: int) -> torch.Tensor:
    """Bases ``(K, 1, S, S)`` resampled to ``(K, 1, size, size)`` (bicubic).

    ``align_corners=False``: pixel centres at ``(k + 1/2) / S`` of the same
    field of view at both sizes (the adapters' grid). Only a starting point:
    the refinement's spot patches are then re-estimated from data.
    """
    with torch.no_grad():
        return torch.nn.functional.interpolate(
            bases.detach(), size=(size, size), mode="bicubic", align_corners=False
        )


def class_groups(cls: torch.Tensor, base_spots: list) -> dict[int, torch.Tensor]:
    """Rows of every class whose base has spots: ``{k: indices}`` (non-empty only)."""
    out = {}
    for k, sp in enumerate(base_spots):
        rows = torch.nonzero(cls == k)[:, 0]
        if sp is not None and len(rows):
            out[k] = rows
    return out


def _stack_patches(patches: list, base_spots: list) -> torch.Tensor:
    """Per-base spot patches ``(n_k, P, P)`` (None: no spots) as one ``(K, n_max, P, P)``.

    Rows beyond a base's own ``n_k`` spots are zero; the refinement only
    uses the first ``n_k``.
    """
    P = next(p.shape[-1] for p in patches if p is not None)
    n_max = max(len(sp) for sp in base_spots if sp is not None)
    out = torch.zeros(len(patches), n_max, P, P, dtype=torch.float32)
    for k, p in enumerate(patches):
        if p is not None:
            out[k, : p.shape[0]] = p
    return out


def _float32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", torch.float32)


@dataclass(frozen=True, eq=False)
class SpotModel:
    """Spots, spot patches and static background of every base.

    Attributes
    ----------
    base_spots : list of ndarray (n_k, 2) or None
        Per base: spot offsets ``(row, column)`` from the pattern centre
        ``(S - 1) / 2``, model pixels at the encoder's size ``S``; None for
        a base without spots.
    radius : float or None
        Compared radius (model pixels at size ``S``); None when no base has
        spots.
    size : int
        The encoder's pattern size ``S`` (px).
    refine_size : int
        Pattern size of the refinement (px); ``scale = refine_size / size``.
    patches : torch.Tensor (K, n_max, P, P) float32 or None
        Spot patches at ``refine_size`` (rows beyond a base's ``n_k`` spots
        are zero), re-estimated from the aligned training patterns; None for
        a model fitted without refinement (then cut from the bases when
        needed, :meth:`class_patches`).
    background : torch.Tensor (refine_size, refine_size) float32 or None
        Static background removed before the comparison (option
        ``background="radial"``), scaled-intensity units.
    """

    base_spots: list
    radius: float | None
    size: int
    refine_size: int
    patches: torch.Tensor | None = None
    background: torch.Tensor | None = None

    # ------------------------------------------------------------ building
    @classmethod
    def find(
        cls, bases: torch.Tensor, ring_mask: np.ndarray, threshold: float, refine_size=None
    ) -> SpotModel:
        """Spots of every base ``(K, 1, S, S)`` above ``threshold`` of the brightest.

        The compared radius is the smallest over the bases with spots
        (:func:`~py4dstem_ccstae.spotfit.find_spots`). No patches yet.
        """
        arr = bases.detach().cpu().numpy()[:, 0]
        found = [find_spots(b, ring_mask, rel_threshold=threshold) for b in arr]
        radii = [r for sp, r, _ in found if sp is not None]
        S = int(arr.shape[-1])
        return cls(
            base_spots=[sp for sp, _, _ in found],
            radius=min(radii) if radii else None,
            size=S,
            refine_size=int(refine_size or S),
        )

    @classmethod
    def from_saved(
        cls, fitted: dict, num_bases: int, size: int, refine_size, state: dict
    ) -> SpotModel:
        """The spot model of a saved model: ``fitted`` metadata plus its arrays.

        Models saved before per-base spots (``fitted`` without
        ``"base_spots"``) used the first base's spots for every base.
        ``state`` holds the arrays of :data:`STATE_KEYS` that were saved.
        """
        per_base = fitted.get("base_spots")
        if per_base is None:
            per_base = [fitted.get("spots")] * int(num_bases)
        radius = fitted.get("spot_radius")
        return cls(
            base_spots=[None if sp is None else np.asarray(sp, float) for sp in per_base],
            radius=None if radius is None else float(radius),
            size=int(size),
            refine_size=int(refine_size or size),
            patches=_float32(state.get("spot_patches")),
            background=_float32(state.get("refine_background")),
        )

    def state(self) -> dict[str, torch.Tensor]:
        """The arrays to save (:data:`STATE_KEYS`), float32, those that exist."""
        out = {"spot_patches": self.patches, "refine_background": self.background}
        return {k: v for k, v in out.items() if v is not None}

    # ------------------------------------------------------------ properties
    @property
    def scale(self) -> float:
        """``refine_size / size``: spot offsets and radius at the refinement's size."""
        return self.refine_size / self.size

    @property
    def spots(self) -> np.ndarray | None:
        """The first base with spots' spots (None: no base has spots)."""
        return next((sp for sp in self.base_spots if sp is not None), None)

    @property
    def has_lattice(self) -> torch.Tensor:
        """(K,) bool: which bases have spots (a lattice to measure)."""
        return torch.tensor([sp is not None for sp in self.base_spots])

    # ------------------------------------------------------------ fitting
    def fit(
        self,
        X: torch.Tensor,
        A: torch.Tensor,
        cls: torch.Tensor,
        bases: torch.Tensor,
        *,
        iterations: int,
        background: str,
    ) -> tuple[SpotModel, torch.Tensor]:
        """Patches (and background) re-estimated from aligned training patterns.

        Parameters
        ----------
        X : torch.Tensor (N, R, R)
            Training patterns at the refinement's size ``R = refine_size``.
        A : torch.Tensor (N, 2, 2)
            Their encoder transforms (base -> pattern).
        cls : torch.Tensor (N,) long
            Their classes (the base each one uses).
        bases : torch.Tensor (K, 1, R, R)
            The bases at size ``R`` (starting patches).
        iterations : int
            Gauss-Newton iterations per refinement.
        background : {"none", "radial"}
            ``"radial"``: with every pattern's spots known after a first
            alignment, estimate the static background without them (on the
            largest class with spots) and align again without it.

        Returns
        -------
        SpotModel
            This model with ``patches`` (and ``background``).
        gain : torch.Tensor (N,)
            Median spot gain of every pattern (NaN for a class without spots).
        """
        groups = class_groups(cls, self.base_spots)
        A_r, t_r, patches, gain = self._realign(X, A, groups, bases, iterations)
        bg = None
        if background == "radial":
            k0 = max(groups, key=lambda k: len(groups[k]), default=None)
            if k0 is not None:
                rows = groups[k0]
                bg = torch.from_numpy(
                    pattern_background(
                        X[rows],
                        A_r[rows],
                        t_r[rows],
                        self.base_spots[k0] * self.scale,
                        self.radius * self.scale,
                    )
                )
                A_r, t_r, patches, gain = self._realign(
                    X, A_r, groups, bases - bg, iterations, bg
                )
        stacked = _stack_patches(patches, self.base_spots)
        new = SpotModel(
            self.base_spots, self.radius, self.size, self.refine_size, stacked, _float32(bg)
        )
        return new, gain

    def _realign(self, X, A, groups, bases, iterations, background=None):
        """Per class: refined transforms (N, 2, 2), translations, patches, gains."""
        f, r = self.scale, self.radius * self.scale
        A_out = A.clone().to(torch.float64)
        t_out = torch.zeros(len(A), 2, dtype=torch.float64)
        gain = torch.full((len(A),), float("nan"))
        # every base with spots keeps its own patches unless its patterns
        # re-estimate them
        own = {
            k: base_patches(bases[k : k + 1], sp * f, r)
            for k, sp in enumerate(self.base_spots)
            if sp is not None
        }
        patches = [own[k][0] if k in own else None for k in range(len(self.base_spots))]
        for k, (rows, out) in self._refine_groups(
            X, A, groups, own, iterations=iterations, background=background, realign=True
        ).items():
            A_out[rows], t_out[rows] = out["A"], out["t"]
            gain[rows] = out["gain"].median(-1).values
            patches[k] = out["patches"][0]
        return A_out, t_out, patches, gain

    # ------------------------------------------------------------ using
    def class_patches(self, bases: torch.Tensor, device) -> dict[int, torch.Tensor]:
        """``{k: (1, n_k, P, P)}`` spot patches of every base with spots, on ``device``.

        The fitted patches; for a model fitted without refinement, cut from
        the bases (``(K, 1, S, S)``, resampled to ``refine_size``).
        """
        f, r = self.scale, (self.radius or 0.0) * self.scale
        if self.patches is None:
            bases = bases if f == 1 else resize_bases(bases, self.refine_size)
        out = {}
        for k, sp in enumerate(self.base_spots):
            if sp is None:
                continue
            if self.patches is None:
                p = base_patches(bases[k : k + 1], sp * f, r)
            else:
                p = self.patches[k : k + 1, : len(sp)]
            out[k] = p.to(device)
        return out

    def refine(
        self, X: torch.Tensor, A: torch.Tensor, cls: torch.Tensor, patches: dict, **kw
    ) -> dict:
        """:func:`~py4dstem_ccstae.spotfit.refine_spots` of every class on its own base.

        ``X`` (N, R, R) patterns at ``refine_size``, ``A`` (N, 2, 2) starting
        transforms, ``cls`` (N,) classes, ``patches`` from
        :meth:`class_patches`; ``kw`` go to ``refine_spots``. Returns ``{k:
        (rows, output)}`` for every class with spots.
        """
        return self._refine_groups(X, A, class_groups(cls, self.base_spots), patches, **kw)

    def _refine_groups(self, X, A, groups: dict, patches: dict, **kw) -> dict:
        """``{k: (rows, refine_spots output)}``; ``rows`` is ``slice(None)`` for a
        class that holds every row (no copy of the inputs)."""
        f, r = self.scale, self.radius * self.scale
        out = {}
        for k, rows in groups.items():
            sel = slice(None) if len(rows) == len(X) else rows
            out[k] = (
                sel,
                refine_spots(
                    X[sel],
                    patches[k],
                    A[sel],
                    self.base_spots[k] * f,
                    r,
                    **kw,
                ),
            )
        return out

    def spot_mask(self, ring_mask: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The first base's spots (float64) and the ring mask cut to their disks.

        Without spots: ``(None, ring mask)``. The mask is ``(S, S)`` float32,
        1 within ``radius`` of a spot and inside the ring.
        """
        sp = self.spots
        if sp is None or not len(sp):
            return None, torch.tensor(ring_mask, dtype=torch.float32)
        S = self.size
        c = (S - 1) / 2.0
        yy, xx = np.mgrid[:S, :S] - c
        d = np.hypot(yy[..., None] - sp[:, 0], xx[..., None] - sp[:, 1]).min(-1)
        m = (d <= self.radius) & ring_mask
        return torch.tensor(sp, dtype=torch.float64), torch.tensor(m, dtype=torch.float32)

    def coverage(self, inputs, idx: np.ndarray) -> list[np.ndarray | None]:
        """Per base: fraction of every spot's disk on the detector, ``(len(idx), n_k)``."""
        return [
            None
            if sp is None
            else inputs.disk_coverage(
                idx, np.asarray(sp) * inputs.dq, (self.radius or 0.0) * inputs.dq
            )
            for sp in self.base_spots
        ]

    def frames(self, bases: torch.Tensor, symmetry: int, max_strain: float) -> list:
        """Every base's lattice relative to the first base with spots (the anchor).

        ``frames[k]`` is ``M_k`` (2 x 2 list) with ``g_k = M_k g_anchor``, so
        that a pattern of class ``k`` with transform ``A`` has the lattice
        ``A @ M_k`` relative to the anchor: one common frame for bases that
        show one lattice strained or rotated (grains, a lateral
        heterostructure). None for a base without spots or with another
        lattice (another phase).

        The bases' spots are matched first
        (:func:`~py4dstem_ccstae.spotfit.register_spots`); ``M_k`` is then
        refined as the per-pattern refinement measures a pattern: the anchor
        base's spot patches moved rigidly onto base ``k``'s image
        (:func:`~py4dstem_ccstae.spotfit.refine_spots`, static background
        removed), so that it relates the disks' positions rather than their
        centres of mass, which the texture inside each disk shifts.
        ``bases``: ``(K, 1, S, S)``.
        """
        base_spots, radius = self.base_spots, self.radius
        anchor = next((k for k, sp in enumerate(base_spots) if sp is not None), None)
        frames: list = [None] * len(base_spots)
        if anchor is None:
            return frames
        frames[anchor] = np.eye(2).tolist()
        bases = bases.detach().to("cpu", torch.float32)
        f = 1.0
        if self.background is not None:
            # the background is stored at the refinement's size: register
            # there (M is a ratio of lattices, the same at any size)
            size = int(self.background.shape[-1])
            if size != bases.shape[-1]:
                f = size / bases.shape[-1]
                bases = resize_bases(bases, size)
            bases = bases - self.background
        p0 = base_spots[anchor] * f
        patches = None
        for k, sp in enumerate(base_spots):
            if sp is None or k == anchor:
                continue
            M = register_spots(base_spots[anchor], sp, symmetry, max_strain)
            if M is not None and radius:
                if patches is None:
                    patches = base_patches(bases[anchor : anchor + 1], p0, radius * f)
                out = refine_spots(
                    bases[k, :1],
                    patches,
                    torch.as_tensor(M, dtype=torch.float64)[None],
                    p0,
                    radius * f,
                    iterations=30,
                    tol=1e-6,
                )
                refined = out["A"][0].numpy()
                # refined to a lattice no further than max_strain: keep it
                if near_rotation(refined, max_strain):
                    M = refined
            frames[k] = None if M is None else np.round(M, 9).tolist()
        return frames
