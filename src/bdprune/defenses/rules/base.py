"""What a pruning rule is: scores (and what else it may read) in, the neurons to prune out, most suspicious first.

The paper's subject is the rule that turns neuron scores into pruned neurons (section 4.4: mean -/+ u * std of
a layer). A rule here is a small declared object, like an attack: its hyperparameters are dataclass fields
(checked once, listed by `parameters()`), it is registered by name (`create_rule("zscore", u=3)`), and its one
method `select(scored, context) -> Selection` decides. Scoring is the defense's (EP: entropies, BNP: KL
divergences); `PruningDefense.run` scores, asks the rule, checks the result on held-out data and prunes.

A rule that reads more than the scores says so in `needs`: "train" (it reads the training set again: EP's
consensus) or "clean" (it runs the model on the clean samples: BNP's guard). A defense refuses a rule whose
needs it is not given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import InvalidInput
from ...neurons.mask import ChannelMask
from ...neurons.threshold import LayerDecision
from ...params import REQUIRED, Parameter, check_fields, convert, parameters
from ...registry import Registry
from ..base import DefenseData
from ..scores import Scores

Neuron = tuple[str, int]  # (layer name, channel)


@dataclass
class RuleContext:
    """What a rule may read besides the scores.

    Attributes:
        model: the suspicious model (a rule that silences neurons to measure restores it).
        data: the defender's data the choice may use (held-out samples are not in it).
        side: which tail of the scores is suspicious: "low" (EP's entropies) or "high" (BNP's KL).
        silence: how the defense silences a pruned neuron (see `bdprune.neurons.mask`).
        batch_size: samples per forward pass.
        progress: show progress bars.
    """

    model: nn.Module
    data: DefenseData
    side: str
    silence: str = "bn"
    batch_size: int = 256
    progress: bool = False


@dataclass
class Selection:
    """What a rule decided.

    Attributes:
        decisions: per layer, the rule's statistics, threshold, z-scores and selected channels.
        order: the selected neurons, most suspicious first: a back-off keeps a prefix of it.
        warnings: caveats for the report and the console.
        extra: the rule's own record for the report (`report.extra[rule name]`).
        layer_extra: per-layer data for the report (e.g. each neuron's AUC), by layer name.
        group: (N,) bool, the training samples the rule suspects of being poisoned (None: it names none).
    """

    decisions: dict[str, LayerDecision]
    order: list[Neuron]
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    layer_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    group: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._sync()

    def _sync(self) -> None:
        """Each decision's `selected` is exactly its layer's neurons in `order`."""
        chosen: dict[str, list[int]] = {name: [] for name in self.decisions}
        for name, channel in self.order:
            chosen[name].append(channel)
        for name, d in self.decisions.items():
            d.selected = sorted(chosen[name])

    @property
    def mask(self) -> ChannelMask:
        return ChannelMask({n: d.selected for n, d in self.decisions.items() if d.selected})

    def keep(self, k: int) -> None:
        """Keep only the first `k` neurons of `order` (a back-off)."""
        self.order = self.order[:k]
        self._sync()


def by_outlyingness(decisions: dict[str, LayerDecision]) -> list[Neuron]:
    """The selected neurons of per-layer decisions, most outlying (largest |z|) first."""
    ranked = [(-abs(float(d.z[c])), name, c) for name, d in decisions.items() for c in d.selected]
    return [(name, c) for _, name, c in sorted(ranked)]


@dataclass(eq=False, kw_only=True)
class Rule(ABC):
    """Base class of pruning rules: hyperparameters are declared fields; `select` decides.

    A subclass sets `name` (its registry name), `needs` (data it reads beyond the scores) and `sides` (which
    score tails it handles), declares its hyperparameters with `bdprune.params.param`, and implements `select`.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    sides: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        check_fields(self, f"rule {self.name!r}")

    @abstractmethod
    def select(self, scored: Scores, context: RuleContext) -> Selection:
        """The neurons to prune, from `scored` and what `context` offers (the model is left as it was)."""

    @classmethod
    def parameters(cls) -> dict[str, Parameter]:
        return parameters(cls)

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.parameters()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


RULES: Registry[Rule] = Registry("rule")


def register_rule(cls: type[Rule]) -> type[Rule]:
    RULES.register(cls.name)(cls)
    return cls


def create_rule(name: str, **params: Any) -> Rule:
    """A registered rule with `params` (command-line strings are parsed by the declared types); a parameter the
    rule does not take is an error that names the rule and the ones it takes."""
    cls: type[Rule] = RULES.get(name)  # type: ignore[assignment]
    declared = cls.parameters()
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise InvalidInput(
            f"rule {name!r} does not take {', '.join(unknown)}: it takes {', '.join(declared) or 'no parameters'}"
            f"{rule_hint(unknown)}"
        )
    missing = [p for p, d in declared.items() if d.default is REQUIRED and p not in params]
    if missing:
        raise InvalidInput(f"rule {name!r} needs {', '.join(missing)} (e.g. --{missing[0].replace('_', '-')} 20)")
    return cls(**convert(f"rule {name!r}", declared, params))


def rule_hint(unknown: list[str]) -> str:
    """Which rules take the parameters a rule was given but does not take (u: guarded, iterative, mad, zscore)."""
    takers = sorted({other for other in RULES.names() for p in unknown if p in RULES.get(other).parameters()})
    return f" ({', '.join(unknown)} belongs to the rule(s) {', '.join(takers)}: --rule NAME)" if takers else ""


def list_rules(pattern: str = "*") -> list[str]:
    return RULES.names(pattern)
