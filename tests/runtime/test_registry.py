import pytest

from facerep.config import ConfigError
from facerep.runtime.errors import FacerepError, one_line
from facerep.runtime.registry import Registry, UnknownNameError


def test_registry_lists_known_names_in_order_in_a_one_line_error():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 1)

    @reg.register("a")
    def entry():  # the decorator returns what it registers
        return 2

    assert reg.get("b") == 1 and reg.get("a") is entry and list(reg) == ["b", "a"] and "a" in reg
    with pytest.raises(UnknownNameError, match=r"^unknown widget 'c'; available: b, a$"):
        reg.get("c")
    with pytest.raises(ValueError, match="widget 'b' is already registered"):
        reg.add("b", 3)
    typed: Registry[int] = Registry("setting", ConfigError)
    with pytest.raises(ConfigError):
        typed.get("x")
    assert issubclass(UnknownNameError, FacerepError) and issubclass(ConfigError, FacerepError)


def test_one_line():
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(KeyError()) == "KeyError"
    assert one_line("x" * 20, limit=10) == "xxxxxxx..."
