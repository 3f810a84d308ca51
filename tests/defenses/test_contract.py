"""The properties every registered defense has, run over the whole registry: a new defense is tested here
with no edit. Iteration counts are cut by parameter name (a defense that declares `epochs` trains one)."""

import json
from typing import ClassVar

import pytest
import torch

import bdprune.data
from bdprune.data import ImageSet
from bdprune.defenses import DEFENSES, DefenseData, DefenseReport, Rule, create_defense, list_defenses

FAST = {"epochs": 1, "teacher_epochs": 1, "iterations": 5}  # by parameter name, for any defense that has them


def fast(name: str, **params):
    declared = DEFENSES.get(name).parameters()
    return create_defense(name, **{k: v for k, v in FAST.items() if k in declared}, **params)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", list_defenses())
def test_same_architecture_input_untouched_and_report_is_json(tiny, images, method, tmp_path):
    model, clean = tiny
    model.train()  # even a model handed over in train mode keeps its mode and BN statistics
    try:
        before = state(model)
        repaired, report = fast(method).run(model, DefenseData(clean=clean, train=images(64, seed=2)))
        assert model.training
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items()), "the input model was modified"
    finally:
        model.eval()
    assert type(repaired) is type(model) and repaired is not model
    assert {k: v.shape for k, v in repaired.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.isfinite(v.float()).all() for v in repaired.state_dict().values())
    assert torch.isfinite(repaired.eval()(clean.float_images()[:4])).all()
    assert report.method == method and report.seconds > 0
    path = report.save(tmp_path / "r.json")
    again = DefenseReport.load(path)
    assert again.num_pruned == report.num_pruned == json.loads(path.read_text())["num_pruned"]
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


class Tripwire:
    """Stands for data a defense must not read: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the defense read .{name} of data it was not meant to use")

    def __len__(self):
        raise AssertionError("the defense read data it was not meant to use")


class Watched(ImageSet):
    """An ImageSet that records every read of its images."""

    reads: ClassVar[list] = []

    def __getattribute__(self, name):
        if name == "images":
            Watched.reads.append(object.__getattribute__(self, "name"))
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("method", list_defenses())
def test_a_defense_reads_only_the_data_it_declares(tiny, images, method, monkeypatch):
    model, clean = tiny
    defense = fast(method)

    def no_loading(*args, **kwargs):
        raise AssertionError("a defense tried to load a dataset from disk")

    monkeypatch.setattr(bdprune.data, "load_dataset", no_loading)
    monkeypatch.setattr(bdprune.data.datasets, "load_dataset", no_loading)
    train = images(64, seed=2)
    given = {
        "clean": Watched(clean.images, clean.labels, clean.classes, name="CLEAN"),
        "train": Watched(train.images, train.labels, train.classes, name="TRAIN"),
    }
    data = DefenseData(
        clean=given["clean"] if "clean" in defense.needs else Tripwire(),
        train=given["train"] if "train" in defense.needs else Tripwire(),
        train_poisoned=torch.zeros(64, dtype=torch.bool) if "train" in defense.needs else Tripwire(),
    )
    data.image_shape = (1, 16, 16)  # set after the shape check, which would read the tripwires
    Watched.reads = []
    _, report = defense.run(model, data)
    assert set(Watched.reads) == {given[n].name for n in defense.needs}
    assert report.samples == sum(len(given[n]) for n in defense.needs)


@pytest.mark.parametrize("method", list_defenses())
def test_a_missing_input_is_a_clear_error(tiny, method):
    model, _ = tiny
    defense = fast(method)
    if not defense.needs:
        pytest.skip("data-free")
    with pytest.raises(ValueError, match="needs"):
        defense.run(model, DefenseData())


@pytest.mark.parametrize("method", list_defenses())
def test_parameters_are_declared_and_unknown_ones_refused(method):
    declared = DEFENSES.get(method).parameters()
    assert {"batch_size", "progress"} <= set(declared)
    defense = create_defense(method)
    rule = set(defense.rule.parameters()) if isinstance(getattr(defense, "rule", None), Rule) else set()
    assert set(defense.params()) <= set(declared) | rule  # a pruning defense records its rule's beside its own
    with pytest.raises(KeyError, match=f"defense '{method}' has no parameter no_such_parameter"):
        create_defense(method, no_such_parameter=3)


def test_wrong_types_and_values_are_clear_errors():
    with pytest.raises(ValueError, match="u must be a finite number"):
        create_defense("bnp", u=float("nan"))
    with pytest.raises(ValueError, match="scope"):
        create_defense("linf", scope="first")
    with pytest.raises(ValueError, match="estimator"):
        create_defense("ep", estimator="magic")
