"""Optional integrations with the tools our users already work in; each module needs its extra:

- `attnsets.integrations.torchmil` (``attnsets[torchmil]``): torchmil models as poolings
  (``torchmil_abmil``, ``torchmil_transmil``, ...) and `torchmil_builder` for your own one.
- `attnsets.integrations.anndata` (``attnsets[anndata]``): `.h5ad` input for explain-data and
  the results written back into ``obs``.
- `attnsets.integrations.mlflow` (``attnsets[mlflow]``): one MLflow run per study cell.

Nothing here is imported by ``import attnsets``: a missing extra costs nothing until it is used.
"""
