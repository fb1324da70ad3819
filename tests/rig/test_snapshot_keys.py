"""`save` and `from`: snapshot points in rig files, as the loader reads them."""

from __future__ import annotations

import pytest

from kvmrig.errors import RigError
from kvmrig.rig.load import load_rig

PARENT = """kvmrig: 1
arch: x86_64
memory:
  - {at: 0x0, size: 2M}
images:
  - {hex: "90 f4", at: 0x1000}
devices:
  - {type: serial, port: 0x3f8, input: "boot\\n"}
cpu: {mode: long}
breakpoints:
  - {at: 0x1001, kind: hw, save: before-hlt}
save: at-exit
"""

CHILD = """kvmrig: 1
arch: x86_64
from: boot.yaml#before-hlt
set:
  regs: {rax: 7}
input: "version\\n"
expect:
  exit: hlt
  regs: {rax: 7}
"""


@pytest.fixture
def rigs(tmp_path):
    (tmp_path / "boot.yaml").write_text(PARENT)
    return tmp_path


def test_a_parent_lists_its_points(rigs):
    parent = load_rig(rigs / "boot.yaml")
    assert parent.save_points() == ("before-hlt", "at-exit")
    assert parent.breakpoints[0].save == "before-hlt" and parent.save == "at-exit"


def test_a_child_inherits_the_machine_and_adds_its_own(rigs):
    (rigs / "child.yaml").write_text(CHILD)
    child = load_rig(rigs / "child.yaml")
    parent = load_rig(rigs / "boot.yaml")
    assert child.start.parent == (rigs / "boot.yaml").resolve() and child.start.point == "before-hlt"
    assert str(child.start).endswith("boot.yaml#before-hlt")
    assert child.memory == parent.memory and child.devices == parent.devices
    assert child.start_set.regs[0][:2] == ("rax", 7)
    assert child.start_input == b"version\n"


@pytest.mark.parametrize("text, message", [
    ("from: boot.yaml#nowhere", "boot.yaml saves no point 'nowhere' \\(it saves: before-hlt, at-exit\\)"),
    ("from: missing.yaml#x", "missing.yaml: no such rig file"),
    ("from: missing.snap", "missing.snap: no such snapshot file"),
    ("from: boot.yaml#at-exit\nmemory:\n  - {at: 0x0, size: 2M}", "takes its memory, images, devices and CPU "
                                                                  "from there: remove `memory`"),
])
def test_bad_from_is_a_rig_error_at_its_line(rigs, text, message):
    (rigs / "child.yaml").write_text(f"kvmrig: 1\narch: x86_64\n{text}\n")
    with pytest.raises(RigError, match=message) as e:
        load_rig(rigs / "child.yaml")
    line = 4 if "memory" in text else 3   # the offending key's line
    assert f"child.yaml:{line}:" in str(e.value)


def test_set_without_from_is_refused(rigs):
    (rigs / "r.yaml").write_text(PARENT + "input: x\n")
    with pytest.raises(RigError, match="`input` is for rigs that start from a snapshot"):
        load_rig(rigs / "r.yaml")


def test_a_point_is_saved_once(rigs):
    (rigs / "r.yaml").write_text(PARENT.replace("save: at-exit", "save: before-hlt"))
    with pytest.raises(RigError, match="'before-hlt' is also saved by breakpoints\\[0\\]"):
        load_rig(rigs / "r.yaml")


def test_a_cycle_of_points_is_named(tmp_path):
    for me, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"{me}.yaml").write_text(f"kvmrig: 1\narch: x86_64\nfrom: {other}.yaml#p\nsave: p\n")
    with pytest.raises(RigError, match="cycle"):
        load_rig(tmp_path / "a.yaml")


def test_a_broken_parent_is_named_in_the_child(rigs):
    (rigs / "boot.yaml").write_text(PARENT.replace("size: 2M", "size: 3"))
    (rigs / "child.yaml").write_text(CHILD)
    with pytest.raises(RigError, match="the rig it starts from has an error: .*boot.yaml"):
        load_rig(rigs / "child.yaml")
