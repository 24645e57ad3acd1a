"""py4dstem-ccstae: CC-ST-AE neural strain mapping for 4D-STEM, as a py4DSTEM extension.

Modules (imports point one way, down this list):

* :mod:`~py4dstem_ccstae.affine` - torch-free lattice transform and strain conventions
* :mod:`~py4dstem_ccstae.noise` - the paper's background-noise model, dose-limited noise
* :mod:`~py4dstem_ccstae.simulate` - ground-truth polycrystal simulator
* :mod:`~py4dstem_ccstae.baseline` - py4DSTEM's own strain pipeline, automated
* :mod:`~py4dstem_ccstae.metrics` - errors against ground truth
* :mod:`~py4dstem_ccstae.io` - atomic EMD/HDF5 writes
* :mod:`~py4dstem_ccstae.adapters` - calibrated, scaled, masked inputs from a DataCube
* :mod:`~py4dstem_ccstae.warp`, ``model``, ``losses``, ``train`` - the CC-ST-AE (torch)
* :mod:`~py4dstem_ccstae.estimator` - ``CCSTAE`` and ``fit_strain``
* :mod:`~py4dstem_ccstae.benchmark` - side-by-side comparison with py4DSTEM
* :mod:`~py4dstem_ccstae.cli` - the ``py4dstem-ccstae`` command line
"""

__version__ = "0.1.0"

from .adapters import DiffractionInputs  # noqa: E402
from .affine import LatticeTransform  # noqa: E402
from .estimator import CCSTAE, fit_strain  # noqa: E402

__all__ = ["CCSTAE", "DiffractionInputs", "LatticeTransform", "fit_strain", "__version__"]
