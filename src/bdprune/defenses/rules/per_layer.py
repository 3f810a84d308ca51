"""The per-layer outlier rules (section 4.4): each layer's scores against their own center and spread.

* `zscore` (the paper's rule): prune scores beyond mean -/+ u * std of their layer (u = 3 on CIFAR-10).
* `mad`: the same with the median and 1.4826 * MAD, a spread the outlying neurons cannot inflate.
* `iterative`: the z-score rule applied again to the neurons not yet selected, until none is beyond u.
* `count`: the `count` neurons with the most extreme per-layer z-scores, across all layers.

The arithmetic (and why a per-layer z-score can flag at most a tenth of a layer) is in
`bdprune.neurons.threshold`; these objects only declare the parameters and order what they select.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...neurons.threshold import select_neurons
from ...params import param
from ..scores import Scores
from .base import Rule, RuleContext, Selection, by_outlyingness, register_rule


@dataclass(eq=False, kw_only=True)
class PerLayer(Rule):
    """A threshold at u (robust) standard deviations from each layer's center."""

    u: float = param(3.0, ge=0.0)  # how many (robust) standard deviations from the layer's center

    def select(self, scored: Scores, context: RuleContext) -> Selection:
        decisions = select_neurons(scored.scores, u=self.u, side=context.side, rule=self.name)
        return Selection(decisions, by_outlyingness(decisions))


@register_rule
@dataclass(eq=False, kw_only=True)
class ZScore(PerLayer):
    """The paper's rule: mean -/+ u * std of the layer's scores (population std), u = 3."""

    name = "zscore"


@register_rule
@dataclass(eq=False, kw_only=True)
class Mad(PerLayer):
    """median -/+ u * 1.4826 * MAD of the layer's scores; u = 6 (chosen on development models)."""

    name = "mad"
    u: float = param(6.0, ge=0.0)


@register_rule
@dataclass(eq=False, kw_only=True)
class Iterative(PerLayer):
    """The z-score rule repeated on the neurons not yet selected, until none is beyond u (3.5)."""

    name = "iterative"
    u: float = param(3.5, ge=0.0)


@register_rule
@dataclass(eq=False, kw_only=True)
class Count(Rule):
    """The `count` neurons with the most extreme per-layer z-scores across all layers."""

    name = "count"
    count: int = param(ge=0)  # how many neurons to prune in total (required)

    def select(self, scored: Scores, context: RuleContext) -> Selection:
        decisions = select_neurons(scored.scores, u=0.0, side=context.side, rule="count", count=self.count)
        return Selection(decisions, by_outlyingness(decisions))
