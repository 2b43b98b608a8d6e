"""Ensemble modes (how clients are grouped into jobs, how the jobs' votes are certified).

:class:`SingleModel` (one job), :class:`FLCertD` (disjoint keyed-hash groups), :class:`FLCertP`
(sampled groups of k) [Cao et al., TIFS 2022], and the :class:`CRFL` baseline. The grouping
math is in :mod:`~fedshield.ensembles.grouping`, the certificates in :mod:`fedshield.certify`.
"""

from fedshield.ensembles.grouping import GroupingError, flcert_d_groups, flcert_p_groups, hash_group
from fedshield.ensembles.modes import CRFL, Certificate, Ensemble, FLCertD, FLCertP, SingleModel

__all__ = [
    "CRFL",
    "Certificate",
    "Ensemble",
    "FLCertD",
    "FLCertP",
    "GroupingError",
    "SingleModel",
    "flcert_d_groups",
    "flcert_p_groups",
    "hash_group",
]
