"""py4dstem-ccstae: CC-ST-AE neural strain mapping for 4D-STEM, as a py4DSTEM extension.

The chain, one stage per module (imports point one way; the full table,
checked by the tests, is ``docs/architecture.md``):

* reading and geometry: :mod:`~py4dstem_ccstae.sources`,
  :mod:`~py4dstem_ccstae.calibration`, :mod:`~py4dstem_ccstae.sampling`,
  :mod:`~py4dstem_ccstae.intensity`, and :mod:`~py4dstem_ccstae.adapters`
  (``DiffractionInputs``: calibrated, scaled, masked inputs from a DataCube)
* the network and its training: ``warp``, ``model``, ``losses``,
  ``encoding``, ``bases``, ``train``
* the per-pattern refinement: ``spotfind``, ``spotpatch``, ``spotfit``,
  :mod:`~py4dstem_ccstae.spotmodel`
* the estimator's stages: :mod:`~py4dstem_ccstae.fitting`,
  :mod:`~py4dstem_ccstae.prediction`, :mod:`~py4dstem_ccstae.strainmap`,
  ``fitted``, ``persistence``, and :mod:`~py4dstem_ccstae.estimator`
  (``CCSTAE``, ``fit_strain``)
* where and around what it runs: :mod:`~py4dstem_ccstae.distributed`,
  ``workflow_io``, :mod:`~py4dstem_ccstae.workflows`, ``demo``, and the
  command line :mod:`~py4dstem_ccstae.cli`
* references: :mod:`~py4dstem_ccstae.affine` (lattice transform and strain
  conventions), the simulator (:mod:`~py4dstem_ccstae.simulate` and its
  stages), :mod:`~py4dstem_ccstae.noise`, :mod:`~py4dstem_ccstae.baseline`
  (py4DSTEM's own pipeline), :mod:`~py4dstem_ccstae.metrics`,
  :mod:`~py4dstem_ccstae.benchmark`
"""

__version__ = "0.1.0"

from .adapters import DiffractionInputs  # noqa: E402
from .affine import LatticeTransform  # noqa: E402
from .estimator import CCSTAE, fit_strain  # noqa: E402

__all__ = ["CCSTAE", "DiffractionInputs", "LatticeTransform", "fit_strain", "__version__"]
