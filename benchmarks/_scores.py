"""Encoder and refined MAE of a fitted model, and their table cells (shared).

Used by the scripts that train one model per row (``coarse_to_fine.py``,
``training_options.py``); imported as ``_scores`` like ``_meta``.
"""

from __future__ import annotations

#: MAE keys of :func:`py4dstem_ccstae.metrics.strain_errors` kept per row.
KEYS = ("mae_e_xx", "mae_e_yy", "mae_e_xy", "mae_theta_deg")


def encoder_and_refined(model, dc, truth, ref) -> dict:
    """``{encoder,refined}_<key>`` MAE of ``model.strain_map(dc)`` against ``truth``.

    'encoder': ``refine_transforms=False`` (the network's own estimate);
    'refined': the default output. Strain relative to the ``ref`` region.
    """
    from py4dstem_ccstae.metrics import strain_errors

    row = {}
    for tag, refine in (("encoder", False), ("refined", True)):
        rs = model.strain_map(dc, reference=ref, refine_transforms=refine)
        e = strain_errors(rs, truth)
        row.update({f"{tag}_{k}": float(e[k]) for k in KEYS})
    return row


def strain_cell(row: dict, tag: str) -> str:
    """``"e_xx / e_yy / e_xy"`` MAE of ``tag`` in a row, x1e-3, two decimals."""
    return " / ".join(f"{1e3 * row[f'{tag}_{k}']:.2f}" for k in KEYS[:3])
