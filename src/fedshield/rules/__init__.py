"""Byzantine-robust aggregation rules on flattened model updates, and the reply-screening policy.

Every rule is a pure function of a ``(num_clients, num_params)`` tensor of updates (client model
minus global model) plus a thin :class:`AggregationRule` subclass binding its parameters:

========================  ================================  =================================
class                     function                          paper
========================  ================================  =================================
:class:`FedAvg`           :func:`fedavg`                    McMahan et al., 2017
:class:`Krum`             :func:`krum`                      Blanchard et al., 2017
:class:`MultiKrum`        :func:`krum` (``num_selected``)   Blanchard et al., 2017
:class:`TrimmedMean`      :func:`trimmed_mean`              Yin et al., 2018
:class:`Median`           :func:`coordinate_median`         Yin et al., 2018
:class:`Bulyan`           :func:`bulyan`                    El Mhamdi et al., 2018
:class:`RFA`              :func:`geometric_median`          Pillutla et al., 2022
:class:`FLTrust`          :func:`fltrust`                   Cao et al., 2021
:class:`FoolsGold`        :func:`foolsgold_weights`         Fung et al., 2020
========================  ================================  =================================

Malformed or malicious replies are handled by :func:`screen_updates` and
:func:`aggregate_screened` (policy in :mod:`fedshield.rules.screening`);
:class:`fedshield.engines.flower.strategy.RuleStrategy` wraps any rule as a Flower strategy.

Naming: a *rule* is the aggregation math (this package); a *strategy* is Flower's server-side
object. The config group keeps Flower's word (``strategy=median`` picks the rule
:class:`Median`), as Flower users expect.
"""

from fedshield.rules.base import AggregationRule, ClientBudget
from fedshield.rules.bulyan import Bulyan, bulyan
from fedshield.rules.errors import AggregationError, ByzantineBudgetError
from fedshield.rules.fedavg import FedAvg, fedavg
from fedshield.rules.fltrust import FLTrust, fltrust
from fedshield.rules.foolsgold import FoolsGold, foolsgold, foolsgold_weights
from fedshield.rules.krum import Krum, MultiKrum, krum
from fedshield.rules.median import Median, coordinate_median
from fedshield.rules.rfa import RFA, geometric_median
from fedshield.rules.screening import ScreenResult, aggregate_screened, screen_updates
from fedshield.rules.trimmed_mean import TrimmedMean, trimmed_mean

__all__ = [
    "RFA",
    "AggregationError",
    "AggregationRule",
    "Bulyan",
    "ByzantineBudgetError",
    "ClientBudget",
    "FLTrust",
    "FedAvg",
    "FoolsGold",
    "Krum",
    "Median",
    "MultiKrum",
    "ScreenResult",
    "TrimmedMean",
    "aggregate_screened",
    "bulyan",
    "coordinate_median",
    "fedavg",
    "fltrust",
    "foolsgold",
    "foolsgold_weights",
    "geometric_median",
    "krum",
    "screen_updates",
    "trimmed_mean",
]
