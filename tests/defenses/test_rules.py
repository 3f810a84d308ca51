"""The rule registry: every rule is declared, registered and refuses what it does not take, by name."""

import pytest
import torch

from bdprune.defenses import BNP, EP, create_defense
from bdprune.defenses.rules import RULES, Rule, RuleContext, create_rule, list_rules
from bdprune.defenses.scores import Scores
from bdprune.errors import InvalidInput, UnknownName
from bdprune.neurons.layers import NeuronLayer


def test_the_registry_holds_every_family():
    assert set(list_rules()) == {"zscore", "mad", "iterative", "count", "consensus", "guarded"}


@pytest.mark.parametrize("name", list_rules())
def test_every_rule_declares_its_parameters_and_refuses_others_by_name(name):
    cls = RULES.get(name)
    assert issubclass(cls, Rule) and cls.name == name
    given = {"count": 3} if name == "count" else {}
    rule = create_rule(name, **given)
    assert set(rule.params()) == set(cls.parameters())
    with pytest.raises(InvalidInput, match=f"rule '{name}' does not take no_such: it takes"):
        create_rule(name, **given, no_such=1)


def test_values_are_checked_and_strings_parsed():
    assert create_rule("zscore", u="2.5").u == 2.5
    with pytest.raises(InvalidInput, match="u must be >= 0"):
        create_rule("mad", u=-1)
    with pytest.raises(InvalidInput, match="rule 'count' needs count"):
        create_rule("count")


def test_a_defense_routes_its_rule_options_to_the_rule():
    bnp = create_defense("bnp", rule="zscore", u=2.0, batch_size=64)
    assert bnp.rule.name == "zscore" and bnp.rule.u == 2.0 and bnp.batch_size == 64
    assert bnp.params()["u"] == 2.0 and bnp.params()["rule"] == "zscore"
    assert create_defense("ep").rule.name == "consensus" and create_defense("bnp").rule.name == "guarded"
    # the silent bug of the old EP: u given to its default rule changed nothing; now it is refused by name
    with pytest.raises(InvalidInput, match="rule 'consensus' does not take u: it takes candidates"):
        create_defense("ep", u=5)
    with pytest.raises(UnknownName, match="defense 'bnp' has no parameter banana"):
        create_defense("bnp", banana=1)
    with pytest.raises(InvalidInput, match="reads"):
        EP.from_options(rule="guarded")  # EP is not given the clean samples the guard reads
    with pytest.raises(InvalidInput, match="rule 'consensus' handles the"):
        BNP.from_options(rule="consensus")  # EP's low entropies, not BNP's high divergences


def test_per_layer_rules_order_their_neurons_most_outlying_first():
    scores = Scores(
        [NeuronLayer("a", None, "a", 8), NeuronLayer("b", None, "b", 8)],
        {
            "a": torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2, 0.05, 5, 9]),
            "b": torch.tensor([1.0, 1.1, 0.9, 1.2, 0.8, 1.05, 0.95, 30]),
        },
        samples=1,
    )
    context = RuleContext(model=torch.nn.Identity(), data=None, side="high")
    selection = create_rule("mad", u=3).select(scores, context)
    assert selection.order == [("b", 7), ("a", 7), ("a", 6)]
    assert selection.decisions["a"].selected == [6, 7] and selection.decisions["b"].selected == [7]
    selection.keep(1)  # a back-off keeps a prefix, and the decisions follow
    assert selection.decisions["a"].selected == [] and selection.mask.pruned == {"b": [7]}
    assert create_rule("count", count=2).select(scores, context).order == [("b", 7), ("a", 7)]
