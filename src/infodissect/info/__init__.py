"""The MI engine: Gaussian-copula mutual information (Ince et al. 2017), vectorised and labelled.

Array kernels (NumPy or PyTorch, CPU or CUDA, sample axis first) in
:mod:`.copula` and :mod:`.estimators` (compiled CPU paths in :mod:`.compiled`),
permutation statistics in :mod:`.stats`, conditional MI over strata and continuous
conditions with its permutations in :mod:`.conditional`, and the xarray/Dask front
:func:`mutual_information` in :mod:`.xr`.
"""

from .copula import copnorm, copnorm_cat, ranks
from .estimators import (cmi_ggg, coinfo_ggg, correlation_pairs, ent_g, gcmi_mixture_cd, mi_gg, mi_gg_pairs,
                         mi_mixture_gd, mi_model_gd)
from .xr import InputError, mutual_information

__all__ = ["copnorm", "copnorm_cat", "ranks", "ent_g", "mi_gg", "mi_gg_pairs", "mi_model_gd", "cmi_ggg", "coinfo_ggg",
           "mi_mixture_gd", "gcmi_mixture_cd", "correlation_pairs", "mutual_information", "InputError"]
