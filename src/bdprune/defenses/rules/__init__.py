"""Pruning rules: how a defense turns neuron scores into the neurons it prunes (section 4.4 and beyond).

| rule | family | takes | reads beyond the scores |
|---|---|---|---|
| `zscore` | per layer (`per_layer.py`), the paper's | u = 3 | nothing |
| `mad` | per layer | u = 6 | nothing |
| `iterative` | per layer | u = 3.5 | nothing |
| `count` | across layers | count | nothing |
| `consensus` | EP's default (`consensus.py`) | candidates, outlier, min_auc, max_hold, resplits | the training set |
| `guarded` | BNP's default (`guarded.py`) | u = 6, max_change, max_drop | the clean samples |

`create_rule(name, **params)` builds one; a parameter the rule does not take is an error naming the rule and
what it takes.
"""

from . import consensus, guarded, per_layer  # noqa: F401  (register the rules)
from .base import RULES, Rule, RuleContext, Selection, create_rule, list_rules, register_rule
from .consensus import Consensus
from .guarded import Guarded
from .per_layer import Count, Iterative, Mad, ZScore

__all__ = [
    "RULES",
    "Consensus",
    "Count",
    "Guarded",
    "Iterative",
    "Mad",
    "Rule",
    "RuleContext",
    "Selection",
    "ZScore",
    "create_rule",
    "list_rules",
    "register_rule",
]
