import pytest

from bdprune.registry import Registry


def test_register_create_and_list():
    reg = Registry("thing")

    @reg.register()
    def alpha(x=1):
        return ("alpha", x)

    @reg.register("beta")
    def _b():
        return "beta"

    assert reg.names() == ["alpha", "beta"]
    assert reg.names("a*") == ["alpha"]
    assert reg.create("alpha", x=3) == ("alpha", 3)
    assert "beta" in reg


def test_duplicate_names_raise():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 2)


def test_unknown_name_lists_known_and_suggests():
    reg = Registry("model")
    reg.register("resnet18")(lambda: 1)
    with pytest.raises(KeyError, match="Did you mean 'resnet18'"):
        reg.get("resnet19")
