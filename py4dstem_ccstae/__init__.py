"""py4dstem-ccstae: CC-ST-AE neural strain mapping for 4D-STEM, as a py4DSTEM extension.

Modules (imports point one way, down this list):

* :mod:`~py4dstem_ccstae.affine` - torch-free lattice transform and strain conventions
* :mod:`~py4dstem_ccstae.noise` - the paper's background-noise model, dose-limited noise
* :mod:`~py4dstem_ccstae.simulate` - ground-truth polycrystal simulator
* :mod:`~py4dstem_ccstae.baseline` - py4DSTEM's own strain pipeline, automated
* :mod:`~py4dstem_ccstae.metrics` - errors against ground truth
* :mod:`~py4dstem_ccstae.cli` - the ``py4dstem-ccstae`` command line
"""

from .affine import LatticeTransform

__version__ = "0.1.0"

__all__ = ["LatticeTransform", "__version__"]
