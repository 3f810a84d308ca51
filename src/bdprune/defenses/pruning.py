"""What the pruning defenses share (EP, BNP, CLP, l-inf): score every neuron, let a rule choose, check the
result on data the choice did not use, silence the chosen neurons in a copy, and report every score,
threshold and pruned neuron.

`PruningDefense.run` is the one `run` of them all; a defense supplies only `score` (and, for the check,
which of its data it sets aside). The rule is a registered object (`bdprune.defenses.rules`): its own
parameters go to it, so `EP(rule="zscore", u=3)` and `create_defense("ep", rule="zscore", u=3)` both work,
and a parameter the rule does not take is an error naming the rule.
"""

from __future__ import annotations

import copy
import math
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput, UnknownName
from ..neurons.layers import NeuronLayer
from ..neurons.mask import SILENCE_MODES, ChannelMask, by_name, pruned_copy, silence_
from ..neurons.threshold import LayerDecision, select_neurons
from ..params import convert, param
from .base import Defense, DefenseData, DefenseReport, LayerReport
from .harm import HarmCheck, back_off
from .rules import RULES, Rule, RuleContext, Selection, create_rule
from .rules.base import rule_hint
from .scores import Scores
from .stamp import Stamp, StampStage
from .synthesis import Found, TriggerStage
from .unlearn import UnlearnStage

THEN = ("none", "unlearn", "synth")  # what may follow the pruning


@dataclass(eq=False, kw_only=True)
class PruningDefense(Defense):
    """Base class of the defenses that prune neurons by their scores.

    Args:
        rule: a rule name (see `bdprune.defenses.rules`; default: the defense's `default_rule`) or a `Rule`
            (`EP(rule=ZScore(u=3))`). With a name, `create_defense("ep", rule="zscore", u=3)` (or
            `EP.from_options`) takes the rule's parameters beside it.
        silence: how a pruned neuron is silenced: "bn", "bn-weight" or "conv" (see `bdprune.neurons.mask`).
        max_harm: the points of accuracy the repair may cost on data the choice did not use (see
            `bdprune.defenses.harm`); beyond it the defense prunes fewer neurons, or none. None: no check.
        check_samples: how many of the defender's samples the check reads (`split` says which).
        then: what follows the pruning: "none", or "unlearn" (EP's setting: name the suspected poisoned training
            samples and unlearn them while fine-tuning briefly on the rest, guarded on held-out training
            samples; `bdprune.defenses.unlearn.UnlearnStage`), or "synth" (BNP's setting: read a trigger out of
            the BN running statistics and, when it sends most clean samples to one class, unlearn it on the clean
            samples, guarded on the held-out ones; `bdprune.defenses.synthesis.TriggerStage`).
        retention: "unlearn" runs only when the pruned model still gives more than this many percent of the
            suspected samples their label (the pruning did not break the shortcut).
        kept_statistics: with then="unlearn", BN layers see only the kept samples' statistics while the group is
            unlearned (`bdprune.defenses.unlearning.unlearn_fine_tune`); False (default): the whole batch's.
        confirm: with then="unlearn", the detector runs before the rule (on the features EP's scoring pass
            recorded), and the model is returned unchanged when no backdoor is confirmed: the detector names no
            poisoned samples (a clean model's low-entropy neurons are not a backdoor's), or the suspect itself
            gives at most `retention` percent of those it names their label (the poisoning did not take: there
            is no shortcut to remove, and pruning or unlearning a group the model never learnt only costs; on
            the development models of seed 0 whose backdoor took, the suspect gave 96.6 to 100 % of them their
            label). False: prune on the rule's word alone. With then="synth", the suspect shows a backdoor when
            the trigger read from its BN statistics confirms one (`TriggerStage.confirms`), a perturbation read
            moves most samples along one map of classes (`TriggerStage.pairs`: all-to-all), or its most
            outlying neuron's robust z-score reaches `evidence_z`; otherwise the model is returned unchanged.
        evidence_z: with then="synth" and `confirm`, the robust z-score (median and MAD of its layer, the MAD
            rule's) of one neuron that is evidence of a backdoor on its own; None: the perturbations alone
            decide.
        batch_size: samples per forward pass.
        progress: show a progress bar.

    A subclass sets `side` and `default_rule`, implements `score`, and may set samples aside for the check in
    `split`; it may add plot data to the report in `annotate`.
    """

    side: ClassVar[str] = "high"  # which tail is suspicious: "low" (EP's entropies) or "high"
    default_rule: ClassVar[str] = "zscore"

    rule: Rule | str | None = None
    silence: str = param("bn", choices=SILENCE_MODES)
    max_harm: float | None = param(None, ge=0.0)
    check_samples: int = param(0, ge=0)
    then: str = param("none", choices=THEN)
    retention: float = param(20.0, ge=0.0, le=100.0)
    kept_statistics: bool = False
    confirm: bool = True
    evidence_z: float | None = param(None, ge=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.then == "unlearn" and "train" not in self.needs:
            raise InvalidInput(
                f"{self.name} is given clean samples only: then='unlearn' needs the training set (EP's setting)"
            )
        if self.kept_statistics and self.then != "unlearn":
            raise InvalidInput(
                f"kept_statistics is an option of the unlearning after the pruning (then='unlearn', EP's default); "
                f"{self.name} runs then={self.then!r}: drop kept_statistics, or use --method ep"
            )
        if self.then == "synth" and "clean" not in self.needs:
            raise InvalidInput(
                f"{self.name} is given no clean samples: then='synth' unlearns on clean samples (BNP's setting)"
            )
        if not isinstance(self.rule, Rule):
            self.rule = create_rule(self.rule or self.default_rule)
        if self.side not in self.rule.sides:
            raise InvalidInput(
                f"{self.name}: rule {self.rule.name!r} handles the {self.rule.sides} tail, not {self.side!r}"
            )
        missing = self.rule.needs - self.needs
        if missing:
            what = {"train": "the training set", "clean": "clean samples"}
            raise InvalidInput(
                f"{self.name} is not given {' or '.join(what[m] for m in missing)}, which rule {self.rule.name!r} "
                f"reads; {self.name}'s rules: {', '.join(self.rules())}"
            )

    @classmethod
    def rules(cls) -> list[str]:
        """The registered rules this defense can run (their needs within its own, its score tail theirs)."""
        return [n for n in RULES.names() if RULES.get(n).needs <= cls.needs and cls.side in RULES.get(n).sides]

    @classmethod
    def from_options(cls, **params: Any) -> PruningDefense:
        """The defense from flat options: its own, and its rule's beside the rule's name (`rule="zscore", u=3`)."""
        declared = cls.parameters()
        rule = params.pop("rule", None)
        own = convert(f"defense {cls.name!r}", declared, {k: params.pop(k) for k in list(params) if k in declared})
        if params:  # the rest are the rule's
            if isinstance(rule, Rule):
                raise InvalidInput(f"give {', '.join(params)} to the rule object itself, not beside it")
            name = rule or cls.default_rule
            takes = list(RULES.get(name).parameters())
            unknown = sorted(set(params) - set(takes))
            if unknown and not rule_hint(unknown):  # no rule takes them either: a misspelt option
                raise UnknownName(
                    f"defense {cls.name!r} has no parameter {', '.join(unknown)}; its parameters: "
                    f"{', '.join(declared)}; its rule {name!r} takes: {', '.join(takes) or 'none'}"
                )
            rule = create_rule(name, **params)  # another rule's parameter: refused, naming the rule
        return cls(rule=rule, **own)

    def params(self) -> dict[str, Any]:
        """The defense's options with its rule's, flat (what reports record and `from_options` takes)."""
        own = {k: v for k, v in super().params().items() if k != "rule"}
        return {"rule": self.rule.name, **self.rule.params(), **own}

    @abstractmethod
    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        """Every neuron's score (the model is not modified)."""

    def split(self, data: DefenseData) -> tuple[DefenseData, HarmCheck | None]:
        """The data the choice may use, and where the check of the result reads (None: no check; the default)."""
        return data, None

    def annotate(self, report: DefenseReport, scores: Scores) -> None:
        """Add plot data to the report (e.g. the most suspicious neurons' distributions)."""

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        choice, check = self.split(data)
        stage, suspects, taken = None, None, None
        scored = self.score(model, choice)
        if self.then == "unlearn":
            stage = UnlearnStage(
                retention=self.retention, seed=0, batch_size=self.batch_size, kept_statistics=self.kept_statistics
            )
            train = choice.require("train", self.name)
            try:
                suspects = stage.detect(model, train, scored.features)
            except InvalidInput as exc:  # e.g. no linear classifier whose input names the samples: prune only
                stage, suspects = None, str(exc)
            if self.confirm and stage is not None:
                taken = stage.retained(model, train.subset(suspects.indices)) if suspects.found else None
                if taken is None or taken[0] <= self.retention:
                    stamper = self.stamp_stage() if taken is None else None
                    stamp = stamper.read(model, train) if stamper is not None else None
                    if stamper is not None and stamper.confirms(stamp):
                        return self.stamp_repaired(stamper, model, train, stamp, suspects, start)
                    report = self.unconfirmed(choice, suspects, start, taken)
                    if stamper is not None:
                        report.extra["stamp"] = stamp.to_dict() if stamp is not None else None
                    return copy.deepcopy(model).eval(), report
        found, evidence = None, None
        if self.then == "synth":  # the trigger is read once, from the suspect: the evidence and the stage's
            synth = TriggerStage(batch_size=self.batch_size)
            found = synth.found(model, choice.require("clean", self.name))
            evidence = self.evidence(synth, found, scored)
            if self.confirm and not evidence["confirmed"]:
                report = self.no_evidence(choice, scored, found, evidence, start)
                report.read = self.what_was_read(found, choice)
                return copy.deepcopy(model).eval(), report
        repaired, report = self.decide(model, choice, scored, check, start=start)
        if evidence is not None:
            report.extra["evidence"] = evidence
            report.read = self.what_was_read(found, choice)
        if isinstance(suspects, str):
            report.extra["unlearn"] = {"skipped": suspects}
            report.warnings.append(f"unlearning not run: {suspects}")
        elif self.then == "synth":
            held = check.samples if check is not None else None
            repaired, extra, warnings = synth.run(model, repaired, choice.require("clean", self.name), held, found)
            report.extra["synth"] = extra
            report.warnings.extend(warnings)
            if extra.get("unlearned"):  # the unlearned suspect replaces the pruned model: nothing is pruned
                for layer in report.layers:
                    layer.pruned = []
            report.seconds = time.perf_counter() - start
        elif stage is not None:
            repaired, extra, warnings = stage.run(
                model, repaired, choice.train, suspects, self.resilence(scored, report)
            )
            report.extra["unlearn"] = {**self.taken_record(taken), **extra}
            report.warnings.extend(warnings)
            if extra.get("guard", {}).get("chosen", 0) is None or extra.get("pruning_dropped"):  # from the suspect
                for layer in report.layers:
                    layer.pruned = []
            report.seconds = time.perf_counter() - start
        return repaired, report

    def evidence(self, synth: TriggerStage, found: Found, scored: Scores) -> dict[str, Any]:
        """Whether the suspect shows a backdoor before anything is pruned (then="synth"): the trigger read from
        its BN statistics confirms one, a perturbation read pairs classes, or its most outlying neuron reaches
        `evidence_z` (the record says which, with the three numbers)."""
        z, layer, channel = strongest_outlier(scored, self.side)
        share = None if isinstance(found, str) else found[0].share
        paired = synth.best_paired(found)
        pairing = None if paired is None else paired.pairing
        by = []
        if synth.confirms(found):
            by.append("trigger")
        if synth.pairs(found):
            by.append("pairing")
        if self.evidence_z is not None and z >= self.evidence_z:  # a NaN z (nothing scored) is no evidence
            by.append("neuron")
        return {
            "confirmed": bool(by),
            "by": by,
            "share": share,
            "confirm_share": synth.confirm_share,
            "pairing": pairing,
            "pair_share": synth.pair_share,
            "strongest_z": z,
            "layer": layer,
            "channel": channel,
            "evidence_z": self.evidence_z,
        }

    @staticmethod
    def what_was_read(found: Found, data: DefenseData) -> dict[str, Any] | None:
        """The report's `read`: the trigger read from the suspect and the clean samples it was read from (the
        trigger witness reuses it rather than reading it again); None when nothing could be read."""
        return None if isinstance(found, str) else {"trigger": found, "clean": data.clean}

    def no_evidence(
        self, data: DefenseData, scored: Scores, found: Found, evidence: dict[str, Any], start: float
    ) -> DefenseReport:
        """The report of a model returned unchanged because it shows no backdoor (`evidence`): every score
        and robust z-score, nothing pruned, and one line that says why."""
        read = (f"the trigger read from the BN statistics sends {evidence['share']:.1f} % of the clean samples "
                f"of other labels to one class (under {evidence['confirm_share']:g} %) and moves "
                f"{evidence['pairing']:.1f} % along one map of classes (under {evidence['pair_share']:g} %)"
                if evidence["share"] is not None else f"no trigger could be read ({found})")  # fmt: skip
        under = "not used" if self.evidence_z is None else f"under {self.evidence_z:g}"
        line = (f"no evidence of a backdoor: {read}, and the most outlying neuron's robust z-score is "
                f"{evidence['strongest_z']:.1f} ({under}): the model is returned unchanged "
                "(confirm=False prunes regardless)")  # fmt: skip
        u = math.inf if self.evidence_z is None else self.evidence_z
        decisions = select_neurons(scored.scores, u=u, side=self.side, rule="mad")
        synth = {"skipped": found} if isinstance(found, str) else {
            "trigger": found[0].to_dict(), "shares": [t.share for t in found[1]], "confirmed": False}  # fmt: skip
        return DefenseReport(method=self.name, config=self.params(), samples=scored.samples,
                             seconds=time.perf_counter() - start,
                             layers=layer_reports(scored.layers, scored.scores, decisions, merge(scored, None)),
                             warnings=[line], unscored=scored.unscored,
                             extra={"evidence": evidence, "synth": synth})  # fmt: skip

    def resilence(self, scored: Scores, report: DefenseReport) -> Callable[[nn.Module], None] | None:
        """A callback silencing the neurons the report pruned in a model again, in this defense's mode (what keeps
        them silent through a fine-tuning, whatever the mode); None when nothing was pruned."""
        mask = ChannelMask({layer.name: list(layer.pruned) for layer in report.layers if layer.pruned})
        if mask.count == 0:
            return None
        layers = by_name(scored.layers)

        def again(net: nn.Module) -> None:
            silence_(net, layers, mask, self.silence)

        return again

    def taken_record(self, taken: tuple[float, int] | None) -> dict[str, Any]:
        """The report's record of what the suspect predicts on the suspected samples (`confirm`), if read."""
        return {"taken": {"percent": taken[0], "samples": taken[1], "max": self.retention}} if taken else {}

    def stamp_stage(self) -> StampStage | None:
        """The stage that looks for a stamp on a whole label where no relabelled group is named (EP's `stamp`);
        None: not looked for."""
        return None

    def stamp_repaired(
        self, stage: StampStage, model: nn.Module, train: ImageSet, stamp: Stamp, suspects: Any, start: float
    ) -> tuple[nn.Module, DefenseReport]:
        """The suspect with a confirmed whole-label stamp unlearned (`StampStage.run`), and its report: nothing
        pruned; the samples carrying the stamp are the suspected ones."""
        repaired, record, warnings = stage.run(model, train, stamp)
        carrying = stamp.carriers(train.images)
        carriers = carrying.nonzero().flatten().tolist()
        own = train.labels.cpu() == stamp.label
        of_label, label_count = int((carrying & own).sum()), int(own.sum())
        chosen = record["guard"]["chosen"] is not None
        after = f"; held-out stamped samples sent to it {record['held_out_witness_before']:.1f} -> " \
            f"{record['held_out_witness_after']:.1f} %" if chosen else ""  # fmt: skip
        line = (f"{suspects.method}: no relabelled group, but {of_label} of label {stamp.label}'s {label_count} "
                f"samples carry a stamp of {int(stamp.mask.sum())} pixels ({len(carriers) - of_label} of other "
                f"labels' do; a clean-label trigger on the whole label), and the suspect sends {stamp.share:.1f} % of other labels' samples stamped with it to "
                f"{stamp.label}: " + ("the stamp unlearned" + after if chosen else
                "the unlearning was refused by its guard: the model is returned unchanged"))  # fmt: skip
        record["line"] = line
        naming = {"detection": suspects.to_dict(), "suspected_indices": carriers, "by": "stamp"}
        report = DefenseReport(method=self.name, config=self.params(), layers=[], samples=len(train),
                               seconds=time.perf_counter() - start, warnings=[line, *warnings],
                               extra={"unlearn": naming, "stamp": record})  # fmt: skip
        return repaired, report

    def unconfirmed(
        self, data: DefenseData, suspects: Any, start: float, taken: tuple[float, int] | None = None
    ) -> DefenseReport:
        """The report of a model returned unchanged because no backdoor is confirmed (`confirm`): the detector
        found no poisoned samples, or the suspect gives at most `retention` percent of those it found their
        label (`taken`: that percentage, and how many it read), so the poisoning did not take. Nothing is
        pruned."""
        if taken is None:
            why = f"no poisoned group among the {len(data.train)} training samples"
            indices: list[int] = []
        else:
            why = (f"the suspect gives only {taken[0]:.1f} % of the suspected samples their label ({taken[1]} of "
                   f"{len(suspects.indices)} read; at most {self.retention:g} %): the poisoning did not take")  # fmt: skip
            indices = suspects.indices.tolist()
        line = (f"{suspects.method}: {why}, so no backdoor is confirmed: the model is returned unchanged "
                "(confirm=False prunes regardless)")  # fmt: skip
        record = {"detection": suspects.to_dict(), "suspected_indices": indices, **self.taken_record(taken)}
        return DefenseReport(method=self.name, config=self.params(), layers=[], samples=len(data.train),
                             seconds=time.perf_counter() - start, warnings=[line], extra={"unlearn": record})  # fmt: skip

    def decide(
        self,
        model: nn.Module,
        data: DefenseData,
        scored: Scores,
        check: HarmCheck | None = None,
        *,
        start: float | None = None,
    ) -> tuple[nn.Module, DefenseReport]:
        """The rule's choice on `scored` (scores of `model` on `data`), checked on `check` when given, pruned in a
        copy and reported. `run` is `score` then `decide`; an experiment that has the scores calls it directly."""
        start = time.perf_counter() if start is None else start
        context = RuleContext(model, data, self.side, self.silence, self.batch_size, self.progress)
        selection = self.rule.select(scored, context)
        harm = None
        if check is not None:
            harm = back_off(model, scored.layers, selection, check, max_harm=self.max_harm, silence=self.silence,
                            batch_size=self.batch_size)  # fmt: skip
        repaired = pruned_copy(model, scored.layers, selection.mask, self.silence)
        warnings = scored.notes(selection.decisions, self.silence) + selection.warnings
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            samples=scored.samples + (len(check.samples) if check is not None and check.samples is not None else 0),
            seconds=time.perf_counter() - start,
            layers=layer_reports(scored.layers, scored.scores, selection.decisions, merge(scored, selection)),
            warnings=warnings + (harm["warnings"] if harm else []),
            unscored=scored.unscored,
            extra={**selection.extra, **({"harm_check": harm["record"]} if harm else {})},
        )
        self.annotate(report, scored)
        return repaired, report


def merge(scored: Scores, selection: Selection | None) -> dict[str, dict]:
    """Per-layer report data: the scoring's and the rule's (None: no rule ran)."""
    chosen = selection.layer_extra if selection is not None else {}
    return {l.name: {**scored.extra.get(l.name, {}), **chosen.get(l.name, {})} for l in scored.layers}


def strongest_outlier(scored: Scores, side: str) -> tuple[float, str | None, int | None]:
    """(robust z-score, layer, channel) of the most outlying neuron on `side`, each layer standardised by its
    median and 1.4826 MAD (the MAD rule's z); (NaN, None, None) when no neuron has a finite z."""
    sign = -1.0 if side == "low" else 1.0
    best: tuple[float, str | None, int | None] = (math.nan, None, None)
    for name, decision in select_neurons(scored.scores, u=math.inf, side=side, rule="mad").items():
        z = sign * decision.z
        z = torch.where(torch.isfinite(z), z, torch.full_like(z, -math.inf))
        if len(z) and float(z.max()) > -math.inf and not (float(z.max()) <= best[0]):
            channel = int(z.argmax())
            best = (float(z[channel]), name, channel)
    return best


def layer_reports(
    layers: list[NeuronLayer],
    scores: dict[str, torch.Tensor],
    decisions: dict[str, LayerDecision],
    extra: dict[str, dict] | None = None,
) -> list[LayerReport]:
    return [
        LayerReport(
            name=l.name,
            conv=l.conv,
            channels=l.channels,
            scores=scores[l.name].tolist(),
            z=decisions[l.name].z.tolist(),
            center=decisions[l.name].center,
            scale=decisions[l.name].scale,
            threshold=decisions[l.name].threshold,
            pruned=decisions[l.name].selected,
            note=decisions[l.name].note,
            extra=(extra or {}).get(l.name, {}),
        )
        for l in layers
    ]


def most_suspicious(report: DefenseReport, k: int, side: str) -> list[tuple[str, int, float]]:
    """The k neurons with the most extreme z-scores: (layer, channel, z), most suspicious first."""
    sign = -1.0 if side == "low" else 1.0
    ranked = [
        (sign * z, layer.name, c) for layer in report.layers for c, z in enumerate(layer.z) if z is not None and z == z
    ]
    ranked.sort(reverse=True)
    return [(name, c, sign * s) for s, name, c in ranked[:k]]


__all__ = ["PruningDefense", "Scores", "layer_reports", "most_suspicious"]
