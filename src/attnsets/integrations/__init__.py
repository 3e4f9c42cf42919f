"""Optional integrations with the tools our users already work in; each module needs its extra:

- `attnsets.integrations.torchmil` (``attnsets[torchmil]``): torchmil models as poolings
  (``torchmil_abmil``, ``torchmil_transmil``, ...) and `torchmil_builder` for your own one.
- `attnsets.integrations.anndata` (``attnsets[anndata]``): `.h5ad` input for explain-data and
  the results written back into ``obs``.
- `attnsets.integrations.mlflow` (``attnsets[mlflow]``): one MLflow run per study cell.

Nothing here is imported by ``import attnsets``: a missing extra costs nothing until it is used.
The torchmil poolings are found by name without an import: `torchmil_plugin` is attnsets' own
``attnsets.plugins`` entry point (see `attnsets.registry.load_entry_point_plugins`).
"""

from __future__ import annotations

import importlib.util

#: What a ``torchmil_*`` pooling name says when torchmil is not installed.
TORCHMIL_MISSING = ("a pooling of the torchmil extra, which is not installed: "
                    "pip install 'attnsets[torchmil]'")


def torchmil_installed() -> bool:
    return importlib.util.find_spec("torchmil") is not None


def torchmil_plugin() -> list[str]:
    """The ``torchmil`` entry point: registers the ``torchmil_*`` poolings when torchmil is
    installed, else reserves the prefix so that such a name says which extra to install.
    Returns the names registered."""
    from attnsets.models.base import POOLINGS

    if not torchmil_installed():
        POOLINGS.reserve("torchmil_", TORCHMIL_MISSING)
        return []
    from attnsets.integrations.torchmil import register_torchmil

    return register_torchmil()
