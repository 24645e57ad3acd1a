"""The spot patches that the per-pattern refinement compares (torch).

What :func:`py4dstem_ccstae.spotfit.refine_spots` moves and compares, spot by
spot: ``P x P`` patches of a base around the pixel nearest each spot
(:func:`base_patches`), their half spectra and the Fourier shift that moves
them rigidly by a sub-pixel vector (:class:`BaseSpots`, :func:`shifted_spots`),
the input's patches around each spot's expected position
(:class:`InputSpots`), input patches shifted back onto the base
(:func:`restored_patches`), and the static background of the patterns, which
is removed from the input patches before they are compared
(:func:`pattern_background`).

Coordinates: pixel ``(row, col)`` = ``(qx, qy)`` of the ``S x S`` patterns,
pixel ``k`` centred at coordinate ``k``; ``c = (S - 1) / 2`` is ``q = 0``; a
base spot at ``c + p`` is expected in an input at ``c + A @ p + t``
(``(A, t)`` = ``theta`` = ``(A11, A12, A21, A22, t1, t2)``, pixels). Patch
pixel ``(P // 2, P // 2)`` is a patch's centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "patch_size",
    "base_patches",
    "gather_patches",
    "patch_freqs",
    "patch_taper",
    "shift_phase",
    "synthesis_matrix",
    "BaseSpots",
    "base_spots",
    "InputSpots",
    "input_spots",
    "shifted_spots",
    "restored_patches",
    "pattern_background",
]


#: How far (pixels) a spot may sit from its patch's centre pixel with its
#: window (:meth:`BaseSpots.window`) still whole inside the patch's candidate
#: pixels; the refinement re-centres the patches of spots that move further
#: (:data:`py4dstem_ccstae.spotfit.RECENTRE_PX` is below it).
WINDOW_SLACK = 1.0


def patch_size(radius: float) -> int:
    """Side P (even, pixels) of the spot patches for a compared ``radius``."""
    return 2 * int(math.ceil(radius + 3)) + 2


def base_patches(bases: torch.Tensor, spots: np.ndarray, radius: float) -> torch.Tensor:
    """Patches ``(K, n, P, P)`` of the bases around the pixel nearest each spot.

    Parameters
    ----------
    bases : Tensor (K, 1, S, S)
    spots : ndarray (n, 2)
        Spot offsets from the centre ``(S - 1) / 2`` (pixels).
    radius : float
        Compared radius (pixels); sets ``P = patch_size(radius)``.
    """
    S = bases.shape[-1]
    c = (S - 1) / 2.0
    K, n = bases.shape[0], len(spots)
    b_int = torch.round(torch.as_tensor(np.asarray(spots), dtype=torch.float64) + c).long()
    out, _ = gather_patches(
        bases[:, 0].detach().to(torch.float32).cpu(),
        b_int[None].expand(K, n, 2).contiguous(),
        patch_size(radius),
    )
    return out


def gather_patches(
    x: torch.Tensor, centres: torch.Tensor, P: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches ``(B, n, P, P)`` of ``x`` (B, S, S) centred on integer ``centres`` (B, n, 2).

    ``x`` may also be a single image ``(1, S, S)``, gathered for every row.

    Patch pixel ``(P // 2, P // 2)`` is the centre. Returns the patches (zero
    outside the image) and a (B, n) bool "fully inside" flag.
    """
    Bx, S, _ = x.shape
    B = centres.shape[0]  # x may be one image (Bx = 1) shared by every row
    u = torch.arange(P, device=x.device) - P // 2
    rows = centres[..., 0, None, None] + u[:, None]  # (B, n, P, 1)
    cols = centres[..., 1, None, None] + u[None, :]  # (B, n, 1, P)
    inside = (rows >= 0) & (rows < S) & (cols >= 0) & (cols < S)  # (B, n, P, P)
    flat = rows.clamp(0, S - 1) * S + cols.clamp(0, S - 1)
    src = x.reshape(Bx, S * S)
    if Bx != B:
        src = src.expand(B, S * S)
    vals = torch.gather(src, 1, flat.reshape(B, -1)).reshape(flat.shape)
    vals = torch.where(inside, vals, vals.new_zeros(()))
    return vals, inside.flatten(-2).all(-1)


def patch_freqs(P: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column frequencies (cycles/pixel) of ``rfft2`` of a P x P patch."""
    fx = torch.fft.fftfreq(P, dtype=dtype, device=device)[:, None]
    fy = torch.fft.rfftfreq(P, dtype=dtype, device=device)[None, :]
    return fx, fy


def patch_taper(P: int, inner: float, dtype, device) -> torch.Tensor:
    """1 inside ``inner`` (pixels from the patch centre), cosine roll-off to 0 at P/2."""
    u = torch.arange(P, dtype=dtype, device=device) - P // 2
    r = torch.sqrt(u[:, None] ** 2 + u[None, :] ** 2)
    outer = P / 2.0 - 0.5
    x = ((r - inner) / max(outer - inner, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * x))


def shift_phase(s: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Fourier factor that shifts a patch by ``s`` (..., 2) pixels (rows, columns).

    ``exp(-2 pi i (fx s_row + fy s_col))``, computed as the product of its row
    and column factors (two 1-D exponentials instead of one per frequency).
    """
    rows = torch.exp(-2j * math.pi * (fx * s[..., 0, None, None]))  # (..., P, 1)
    cols = torch.exp(-2j * math.pi * (fy * s[..., 1, None, None]))  # (..., 1, F)
    return rows * cols


@dataclass
class BaseSpots:
    """The base side of the refinement: what every pattern is compared with.

    Attributes
    ----------
    c : float
        Pattern centre ``(S - 1) / 2`` (pixels).
    p : Tensor (n, 2) float64
        Spot offsets from ``c`` in the base (pixels).
    reach : float
        Largest ``|p|`` (pixels; 0 without spots): bounds how far a step in
        ``A`` moves a spot.
    P : int
        Patch side (pixels, :func:`patch_size`).
    radius : float
        Compared radius (pixels): the window of a spot is 1 within
        ``radius - 0.5`` of the spot's current position and falls to 0 at
        ``radius + 0.5`` (:meth:`window`).
    D : Tensor (m,) long
        Flat indices of a patch's candidate pixels: within ``radius + 0.5 +
        WINDOW_SLACK`` of its centre, so the window of a spot up to
        ``WINDOW_SLACK`` pixels from its patch's centre pixel is whole.
    du, dv : Tensor (m,) float32
        Row and column offsets (pixels) of the candidate pixels from the
        patch centre.
    ur, vr : Tensor (m,) float32
        ``du``, ``dv`` in radii (the gain ramp of ``texture="ramp"``).
    f_base : Tensor (n, 2) float64
        Each spot's centre in its patch, from the patch centre (pixels).
    M : Tensor (n, 2, 6) float64
        ``d s_k / d (A11, A12, A21, A22, t1, t2)``: how a spot's shift moves
        with the six parameters of a pattern.
    fx, fy : Tensor
        Row and column frequencies of a patch's half spectrum (:func:`patch_freqs`).
    patches : Tensor (1, n, P, P) float32
        The base's spot patches as given.
    spectra : Tensor (1, n, P, P // 2 + 1) complex64
        Half spectra of the patches, less their border level, tapered.
    texture : {"fixed", "ramp"}
        Model of the spot's intensity (:func:`~py4dstem_ccstae.spotfit.refine_spots`).
    """

    c: float
    p: torch.Tensor
    reach: float
    P: int
    radius: float
    D: torch.Tensor
    du: torch.Tensor
    dv: torch.Tensor
    ur: torch.Tensor
    vr: torch.Tensor
    f_base: torch.Tensor
    M: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    patches: torch.Tensor
    spectra: torch.Tensor
    texture: str

    def repeated(self, count: int) -> torch.Tensor:
        """``spectra`` once per pattern, ``(count, n, P, P // 2 + 1)``, contiguous.

        :func:`shifted_spots` multiplies it with every pattern's shifts row
        by row; a broadcast product of the one copy would round some
        elements differently on CPU (the vectorised loop's scalar tail then
        falls on every row).
        """
        return self.spectra.expand(count, -1, -1, -1).contiguous()

    def compared(self, G: torch.Tensor) -> torch.Tensor:
        """Candidate pixels (..., m) of the real patches whose half spectra are ``G``."""
        return torch.fft.irfft2(G, s=(self.P, self.P)).flatten(-2)[..., self.D]

    def compared_with_gradients(
        self, G: torch.Tensor, gradients: str = "spectral"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate pixels (..., m) of the patches of spectra ``G``, and their gradients.

        ``G`` (..., P, P // 2 + 1) complex64: half spectra of real patches
        (``rfft2`` layout). ``gradients``: ``"spectral"`` (the default of the
        refinement, :data:`py4dstem_ccstae.spotfit.GRADIENTS`) differentiates
        the band-limited patch exactly (Fourier derivatives, ``2 pi i f``
        times the spectrum); ``"difference"`` takes central differences of
        the patch (the candidate pixels lie at least one pixel inside the
        patch). Either is taken wherever the spot is now, which is what keeps
        the refinement's fixed point in place. The two read synthetic spots
        of a wrong profile to 3e-5 in strain; on other data they differ
        (``benchmarks/multislice_reading.md``): central differences weigh a
        spot's lower frequencies more, which helped on the multislice
        heterostructure and the flat scan under noise and cost 5-14 % on the
        package's simulator and about 35 % on the thickness wedge.

        Computed as one real matrix product, ``view_as_real(G) @ W``:
        ``W`` (:func:`synthesis_matrix`) is the linear map "inverse ``rfft2``,
        then the candidate pixels and their gradients" materialised once, by
        applying exactly that to every real and imaginary unit spectrum. The
        result is that of the transforms themselves (same Nyquist handling)
        to float32 rounding, at a fraction of the cost of a few million tiny
        inverse FFTs (we only need ``m`` of the ``P * P`` pixels).
        """
        m = self.D.numel()
        W = synthesis_matrix(self.P, self.D, gradients, G.device)
        out = torch.view_as_real(G).flatten(-3) @ W
        return out[..., :m], out[..., m : 2 * m], out[..., 2 * m :]

    def window(self, h: torch.Tensor) -> torch.Tensor:
        """Weights (..., m) of the candidate pixels for spots at ``h`` (..., 2).

        ``h``: each spot's position from its patch's centre pixel (pixels,
        rows and columns). The window moves with the spot: 1 within
        ``radius - 0.5`` pixels of ``h``, a cosine roll-off to 0 at ``radius
        + 0.5``. A window fixed around the starting pixel cuts a spot that
        has moved asymmetrically, and with a spot template that is not exact
        that pulls the fit back towards its start; a window centred on the
        spot's current position keeps a symmetric spot's true position a
        fixed point of the fit.
        """
        d = torch.sqrt((self.du - h[..., 0, None]) ** 2 + (self.dv - h[..., 1, None]) ** 2)
        x = (d - (self.radius - 0.5)).clamp(0.0, 1.0)
        return 0.5 * (1.0 + torch.cos(math.pi * x))


_SYNTHESIS: dict = {}


def synthesis_matrix(
    P: int, D: torch.Tensor, gradients: str, device: torch.device | str
) -> torch.Tensor:
    """``W`` (2 * P * (P // 2 + 1), 3 * m) float32: half spectrum -> compared values.

    For a half spectrum ``G`` (P, P // 2 + 1) of a real P x P patch (the
    ``rfft2`` layout, :func:`patch_freqs`), ``view_as_real(G).flatten() @ W``
    is ``[x[D], dx/drow[D], dy/dcol[D]]`` of ``x = irfft2(G, s=(P, P))``
    (``D``: flat indices of the ``m`` candidate pixels): for ``gradients =
    "spectral"`` the gradients are the inverse transforms of ``2 pi i fx G``
    and ``2 pi i fy G``, for ``"difference"`` the central differences ``(x[D
    + P] - x[D - P]) / 2`` and ``(x[D + 1] - x[D - 1]) / 2``. Built by applying
    exactly these operations (``torch.fft.irfft2``, float64) to each of the
    ``2 * P * (P // 2 + 1)`` real and imaginary unit spectra; cached per
    ``(P, D, gradients, device)``.
    """
    if gradients not in ("spectral", "difference"):
        raise ValueError(f"gradients must be 'spectral' or 'difference', got {gradients!r}")
    key = (P, tuple(D.tolist()), gradients, str(device))
    if key not in _SYNTHESIS:
        F = P // 2 + 1
        k = 2 * P * F
        basis = torch.view_as_complex(
            torch.eye(k, dtype=torch.float64).reshape(k, P, F, 2).contiguous()
        )
        fx, fy = patch_freqs(P, torch.float64, "cpu")
        Dc = D.cpu()
        if gradients == "spectral":
            x = torch.fft.irfft2(
                torch.stack(
                    [basis, basis * (2j * math.pi * fx), basis * (2j * math.pi * fy)]
                ),
                s=(P, P),
            ).flatten(-2)[..., Dc]  # (3, k, m)
            cols = [x[0], x[1], x[2]]
        else:
            x = torch.fft.irfft2(basis, s=(P, P)).flatten(-2)  # (k, P * P)
            cols = [
                x[:, Dc],
                0.5 * (x[:, Dc + P] - x[:, Dc - P]),
                0.5 * (x[:, Dc + 1] - x[:, Dc - 1]),
            ]
        _SYNTHESIS[key] = torch.cat(cols, -1).to(device=device, dtype=torch.float32)
    return _SYNTHESIS[key]


def _shift_jacobian(p: torch.Tensor) -> torch.Tensor:
    """``M`` (n, 2, 6) float64: spot ``k`` moves to ``A p_k + t = M_k theta``.

    ``theta`` = ``(A11, A12, A21, A22, t1, t2)``; ``p`` (n, 2) the spots.
    """
    M = torch.zeros(p.shape[0], 2, 6, dtype=torch.float64, device=p.device)
    M[:, 0, 0], M[:, 0, 1] = p[:, 0], p[:, 1]
    M[:, 1, 2], M[:, 1, 3] = p[:, 0], p[:, 1]
    M[:, 0, 4] = M[:, 1, 5] = 1.0
    return M


def base_spots(
    patches: torch.Tensor, spots: np.ndarray, radius: float, size: int, texture: str
) -> BaseSpots:
    """The model of the base's spots (:class:`BaseSpots`) for patterns of side ``size``.

    Each patch's level (the mean of its border, where the taper is below
    0.05; with ``texture="ramp"`` the median, so that a neighbouring disk
    reaching the border does not lift the level the gain ramp multiplies) is
    removed before it is tapered (1 within ``radius + 1`` pixels of the
    centre) and transformed.
    """
    dev = patches.device
    dt = torch.float32
    c = (size - 1) / 2.0
    p64 = torch.as_tensor(np.asarray(spots), dtype=torch.float64, device=dev)  # (n, 2)
    n = p64.shape[0]
    P = patch_size(radius)
    if tuple(patches.shape) != (1, n, P, P):
        raise ValueError(
            f"patches must have shape (1, {n}, {P}, {P}), got {tuple(patches.shape)}"
        )
    fx, fy = patch_freqs(P, dt, dev)
    taper = patch_taper(P, radius + 1.0, dt, dev)
    u = torch.arange(P, dtype=dt, device=dev) - P // 2
    reach = radius + 0.5 + WINDOW_SLACK
    inner = ((u[:, None] ** 2 + u[None, :] ** 2) <= reach**2).flatten()
    D = torch.nonzero(inner)[:, 0]  # candidate pixels of a patch (flat indices)
    du = u[:, None].expand(P, P).flatten()[D]
    dv = u[None, :].expand(P, P).flatten()[D]
    Bp = patches.to(dt)
    edge = (taper < 0.05).to(dt)
    bg = (Bp * edge).sum((-1, -2), keepdim=True) / edge.sum()
    if texture == "ramp":
        border = Bp.flatten(-2)[..., torch.nonzero(edge.flatten())[:, 0]]
        bg = border.median(-1).values[..., None, None]
    return BaseSpots(
        c=c,
        p=p64,
        reach=float(p64.norm(dim=-1).max()) if n else 0.0,
        P=P,
        radius=float(radius),
        D=D,
        du=du,
        dv=dv,
        ur=du / radius,
        vr=dv / radius,
        f_base=p64 + c - torch.round(p64 + c),
        M=_shift_jacobian(p64),
        fx=fx,
        fy=fy,
        patches=Bp,
        spectra=torch.fft.rfft2((Bp - bg) * taper),  # (1, n, P, P // 2 + 1)
        texture=texture,
    )


@dataclass
class InputSpots:
    """A batch of inputs around its spots' starting positions (``B`` patterns).

    Attributes
    ----------
    centres : Tensor (B, n, 2) float64
        Pixel nearest each spot's starting position (patch centres).
    patches : Tensor (B, n, P, P) float32
        Input patches around them (zero outside the pattern).
    valid : Tensor (B, n) bool
        Patch wholly inside the pattern.
    values : Tensor (B, n, m) float32
        Candidate pixels of the patches (:attr:`BaseSpots.D`).
    weight : Tensor (B, n, 1) float32
        1 for a valid patch, 0 otherwise (the refinement multiplies it with
        each spot's moving window, :meth:`BaseSpots.window`).
    """

    centres: torch.Tensor
    patches: torch.Tensor
    valid: torch.Tensor
    values: torch.Tensor
    weight: torch.Tensor


def input_spots(
    x: torch.Tensor, theta: torch.Tensor, base: BaseSpots, background: torch.Tensor | None
) -> InputSpots:
    """Patches of patterns ``x`` (B, S, S) at their spots under ``theta`` (B, 6).

    ``theta`` = ``(A11, A12, A21, A22, t1, t2)`` float64; the static
    ``background`` (S, S), if any, is subtracted first.
    """
    A = theta[:, :4].reshape(-1, 2, 2)
    pos0 = base.p @ A.transpose(-1, -2) + theta[:, None, 4:] + base.c  # (B, n, 2)
    centres = torch.round(pos0)
    if background is not None:
        x = x - background.to(x.device, x.dtype)
    patches, valid = gather_patches(x, centres.long(), base.P)
    values = patches.flatten(-2)[..., base.D]  # (B, n, m)
    return InputSpots(centres, patches, valid, values, valid.to(values.dtype)[..., None])


def shifted_spots(
    base: BaseSpots, theta: torch.Tensor, centres: torch.Tensor, spectra: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The base's spots moved to ``c + A p + t`` (``theta``, B x 6), patches at ``centres``.

    ``spectra``: the base's spectra once per pattern (:meth:`BaseSpots.repeated`).
    Returns the spots' positions ``h`` (B, n, 2) float32 from their patches'
    centre pixels, the sub-pixel shifts ``s = h - f_base`` (B, n, 2) float32
    (pixels, from each base spot's place in its patch) and the shifted
    patches' half spectra.
    """
    A = theta[:, :4].reshape(-1, 2, 2)
    h = base.p @ A.transpose(-1, -2) + theta[:, None, 4:] + base.c - centres
    s = (h - base.f_base).to(torch.float32)
    return h.to(torch.float32), s, spectra * shift_phase(s, base.fx, base.fy)


def restored_patches(
    base: BaseSpots,
    inp: InputSpots,
    shift: torch.Tensor,
    offset: torch.Tensor,
    gain: torch.Tensor,
) -> torch.Tensor:
    """Input spot patches (B, n, P, P) shifted back onto the base, gain and offset removed.

    Each patch of ``inp`` is moved by minus its spot's ``shift`` (B, n, 2)
    pixels (Fourier), then ``(patch - offset) / gain`` ((B, n) each).
    """
    back = torch.fft.irfft2(
        torch.fft.rfft2(inp.patches) * shift_phase(-shift, base.fx, base.fy),
        s=(base.P, base.P),
    )
    return (back - offset[..., None, None]) / gain[..., None, None]


def pattern_background(
    X: torch.Tensor,
    A: torch.Tensor,
    t: torch.Tensor,
    spots: np.ndarray,
    radius: float,
    margin: float = 1.0,
    batch_size: int = 256,
) -> np.ndarray:
    """The part of the patterns that does not move with the lattice, (S, S) float32.

    A diffuse halo or background around the direct beam stays where it is
    while the spots move; the refinement compares spot patches, and a static
    gradient under a spot pulls its fitted position towards no motion. This
    estimate is rotationally symmetric about the pattern centre ``(S - 1) / 2``
    (the direct beam: the adapters centre every pattern on its origin). Each
    pattern ``X[i]`` is masked within ``radius + margin`` of its own spots, at
    ``c + A[i] @ p + t[i]`` (refined transforms), and its median taken in
    1-pixel rings; the background of a ring is the median over patterns of
    those medians, linearly interpolated in radius (rings with no unmasked
    pixel take their neighbours' values). Masking each pattern's own spots,
    rather than taking the mean pattern, keeps spots out of the estimate when
    orientations differ widely (full-rotation scans smear the mean's spots
    into rings).

    Parameters
    ----------
    X : Tensor (N, S, S)
        Model inputs (scaled intensity).
    A, t : Tensor (N, 2, 2), (N, 2)
        Base -> input transforms and translations (pixels) of the patterns,
        as returned by :func:`~py4dstem_ccstae.spotfit.refine_spots`.
    spots : ndarray (n, 2)
        Spot offsets from the centre in the base (pixels).
    radius : float
        Compared spot radius (pixels).
    margin : float
        Extra distance (pixels) from the spots of the pixels used.
    batch_size : int
        Patterns processed at a time.

    Returns
    -------
    ndarray float32 (S, S)
    """
    N, S, _ = X.shape
    c = (S - 1) / 2.0
    yy, xx = np.mgrid[:S, :S] - c
    r = np.hypot(yy, xx).ravel()
    ring = r.astype(int)
    rings = [np.nonzero(ring == k)[0] for k in range(int(ring.max()) + 1)]
    rings = [(float(r[ix].mean()), torch.from_numpy(ix)) for ix in rings if ix.size]
    pix = torch.tensor(np.stack([yy.ravel(), xx.ravel()], -1), dtype=torch.float64)
    p64 = torch.as_tensor(np.asarray(spots), dtype=torch.float64)
    per_ring: list[list[torch.Tensor]] = [[] for _ in rings]
    for s0 in range(0, N, batch_size):
        sl = slice(s0, s0 + batch_size)
        A64, t64 = A[sl].to(torch.float64), t[sl, None].to(torch.float64)
        pos = p64 @ A64.transpose(-1, -2) + t64  # (B, n, 2) from the centre
        near = torch.cdist(pix.expand(pos.shape[0], -1, -1), pos).min(-1).values
        vals = X[sl].reshape(-1, S * S).to(torch.float64)
        vals = torch.where(near > radius + margin, vals, torch.nan)
        for meds, (_, ix) in zip(per_ring, rings, strict=True):
            meds.append(torch.nanmedian(vals[:, ix], dim=1).values)
    centres, values = [], []
    for meds, (centre, _) in zip(per_ring, rings, strict=True):
        m = torch.cat(meds)
        m = m[~torch.isnan(m)]
        if len(m):
            centres.append(centre)
            values.append(float(m.median()))
    if not values:
        return np.zeros((S, S), np.float32)
    return np.interp(np.hypot(yy, xx), centres, values).astype(np.float32)
