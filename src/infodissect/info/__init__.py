"""The MI engine: Gaussian-copula mutual information (Ince et al. 2017), vectorised and labelled.

Array kernels (NumPy or PyTorch, CPU or CUDA, sample axis first) in
:mod:`.copula` and :mod:`.estimators`, permutation statistics in :mod:`.stats`,
and the xarray/Dask front :func:`mutual_information` in :mod:`.xr`.
"""

from .copula import copnorm, ranks
from .estimators import cmi_ggg, coinfo_ggg, correlation_pairs, ent_g, mi_gg, mi_gg_pairs, mi_model_gd
from .xr import InputError, mutual_information

__all__ = ["copnorm", "ranks", "ent_g", "mi_gg", "mi_gg_pairs", "mi_model_gd", "cmi_ggg", "coinfo_ggg",
           "correlation_pairs", "mutual_information", "InputError"]
