"""The example guests under rigs/ rebuild byte for byte, and every rig's files exist.

The built images (rigs/x86/guests/*.bin, *.elf, rigs/arm64/guests/*.bin) are
committed because the rigs load them; `make -C rigs` is only for editing a
guest. These tests keep the two honest: a rebuild from the sources must give
exactly the committed bytes (so a source edit without a rebuild, or a
non-reproducible build, is caught), and no rig may point at a file that is not
there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RIGS = ROOT / "rigs"
X86_RIGS = sorted((RIGS / "x86").glob("*.yaml"))
GUESTS = RIGS / "x86" / "guests"
BUILT_SUFFIXES = (".bin", ".elf")
TOOLS = ("as", "ld", "objcopy", "make")
SCHEMA_COMMENT = "# yaml-language-server: $schema=../../schemas/rig.schema.json"


def _built(folder: Path) -> dict[str, bytes]:
    """Every built guest image under `folder`, by path relative to it."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in BUILT_SUFFIXES and "build" not in p.relative_to(folder).parts
    }


def _x86_only(images: dict[str, bytes]) -> dict[str, bytes]:
    """The x86 guests of a _built(rigs) map (the arm64 ones have their own tests below)."""
    return {rel: data for rel, data in images.items() if rel.startswith("x86/")}


def _missing_build_tool() -> str | None:
    """Why the guests cannot be rebuilt here, or None when they can."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH to rebuild the guests"
    version = subprocess.run(["as", "--version"], capture_output=True, text=True).stdout
    if not any(target in version for target in ("x86_64", "i386", "i686")):
        return "the system `as` does not target x86 (pass a cross toolchain to make by hand)"
    return None


def test_committed_guest_images_exist():
    built = _built(RIGS / "x86")
    sources = sorted(GUESTS.glob("*.S")) + sorted(GUESTS.glob("*.c"))   # one image per source
    assert sources, "no guest sources under rigs/x86/guests"
    assert len(built) == len(sources), (
        f"{len(sources)} guest sources but {len(built)} built images: {sorted(built)}"
    )


def test_rebuild_is_byte_identical(tmp_path):
    reason = _missing_build_tool()
    if reason:
        pytest.skip(reason)
    committed = _x86_only(_built(RIGS))
    copy = tmp_path / "rigs"
    shutil.copytree(RIGS, copy, ignore=shutil.ignore_patterns("build"))
    for rel in committed:
        (copy / rel).unlink()

    # The documented rebuild command: make -C rigs
    done = subprocess.run(["make", "-C", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0, f"make -C rigs failed:\n{done.stdout}\n{done.stderr}"

    rebuilt = _x86_only(_built(copy))
    assert sorted(rebuilt) == sorted(committed), "the rebuild made a different set of images"
    differ = [rel for rel in committed if rebuilt[rel] != committed[rel]]
    assert not differ, (
        f"rebuilt images differ from the committed ones: {differ}; "
        "run `make -C rigs` and commit the result, or make the build reproducible"
    )


def _referenced_files(rig: dict) -> list[str]:
    """Paths a rig names (images and a golden file), as written."""
    files = [img["file"] for img in rig.get("images") or [] if isinstance(img, dict) and "file" in img]
    golden = (rig.get("expect") or {}).get("golden")
    if isinstance(golden, str):
        files.append(golden)
    elif isinstance(golden, dict) and "file" in golden:
        files.append(golden["file"])
    return files


def test_there_are_x86_rigs():
    assert len(X86_RIGS) >= 10


ARM64_RIGS = sorted((RIGS / "arm64").glob("*.yaml"))


def _example_rigs():
    """Every example rig with the arch its folder promises (x86/ and arm64/)."""
    return ([pytest.param(p, "x86_64", id=f"x86/{p.name}") for p in X86_RIGS]
            + [pytest.param(p, "arm64", id=f"arm64/{p.name}") for p in ARM64_RIGS])


@pytest.mark.parametrize("rig_path,arch", _example_rigs())
def test_rig_references_existing_files(rig_path, arch):
    rig = yaml.safe_load(rig_path.read_text())
    assert isinstance(rig, dict), f"{rig_path}: not a mapping"
    for rel in _referenced_files(rig):
        # Paths in a rig are relative to the rig file's folder.
        assert (rig_path.parent / rel).is_file(), f"{rig_path.name} names {rel}, which does not exist"


@pytest.mark.parametrize("rig_path,arch", _example_rigs())
def test_rig_follows_the_example_conventions(rig_path, arch):
    text = rig_path.read_text()
    lines = text.splitlines()
    assert lines[0] == SCHEMA_COMMENT, f"{rig_path.name}: first line must be the schema comment"
    assert lines[1].startswith("# "), f"{rig_path.name}: second line must say what the rig teaches"
    rig = yaml.safe_load(text)
    assert rig["kvmrig"] == 1
    assert rig["arch"] == arch
    assert isinstance(rig.get("description"), str) and rig["description"]
    assert isinstance(rig.get("tags"), list) and rig["tags"]


@pytest.mark.parametrize("rig_path,arch", _example_rigs())
def test_rig_matches_the_published_schema(rig_path, arch):
    import jsonschema

    schema_path = ROOT / "schemas" / "rig.schema.json"
    schema = json.loads(schema_path.read_text())
    rig = yaml.safe_load(rig_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(rig), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


# --- arm64 -------------------------------------------------------------------

ARM64_GUESTS = RIGS / "arm64" / "guests"
ARM64_TOOLS = ("aarch64-linux-gnu-as", "aarch64-linux-gnu-ld", "aarch64-linux-gnu-objcopy", "make")


def _missing_arm64_build_tool() -> str | None:
    """Why the arm64 guests cannot be rebuilt here, or None when they can."""
    missing = [t for t in ARM64_TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH to rebuild the arm64 guests (binutils-aarch64-linux-gnu)"
    return None


def test_committed_arm64_guest_images_exist():
    built = _built(ARM64_GUESTS)
    sources = sorted(ARM64_GUESTS.glob("*.S"))
    assert sources, "no guest sources under rigs/arm64/guests"
    assert sorted(built) == sorted(f"{s.stem}.bin" for s in sources), (
        f"{len(sources)} arm64 guest sources but built images {sorted(built)}"
    )


def test_arm64_rebuild_is_byte_identical(tmp_path):
    reason = _missing_arm64_build_tool()
    if reason:
        pytest.skip(reason)
    committed = {rel: data for rel, data in _built(RIGS).items() if rel.startswith("arm64/")}
    copy = tmp_path / "rigs"
    shutil.copytree(RIGS, copy, ignore=shutil.ignore_patterns("build"))
    for rel in committed:
        (copy / rel).unlink()

    # The documented rebuild command: make -C rigs (its arm64 part)
    done = subprocess.run(["make", "-C", str(copy), "arm64"], capture_output=True, text=True)
    assert done.returncode == 0, f"make -C rigs arm64 failed:\n{done.stdout}\n{done.stderr}"

    rebuilt = {rel: data for rel, data in _built(copy).items() if rel.startswith("arm64/")}
    assert sorted(rebuilt) == sorted(committed), "the rebuild made a different set of arm64 images"
    differ = [rel for rel in committed if rebuilt[rel] != committed[rel]]
    assert not differ, (
        f"rebuilt arm64 images differ from the committed ones: {differ}; "
        "run `make -C rigs` and commit the result, or make the build reproducible"
    )


def test_there_are_arm64_rigs():
    assert len(ARM64_RIGS) >= 8


# --- firmware device trees -----------------------------------------------------

FIRMWARE = RIGS / "firmware"


def test_committed_device_trees_exist():
    sources = sorted(FIRMWARE.glob("*.dts"))
    assert sources, "no device tree sources under rigs/firmware"
    built = sorted(p.name for p in FIRMWARE.glob("*.dtb"))
    assert built == sorted(f"{s.stem}.dtb" for s in sources), (
        f"device tree sources {[s.name for s in sources]} but built {built}"
    )


def test_the_u_boot_rig_runs_on_a_generated_device_tree():
    # rigs/firmware/u-boot-arm64.yaml has kvmrig generate its tree from the rig
    # (kvmrig.arch.arm64.devicetree); the hand-written .dts serves the snapshot rigs.
    uboot = yaml.safe_load((FIRMWARE / "u-boot-arm64.yaml").read_text())
    assert uboot["dtb"] == {"at": 0x40000000} and not any(".dtb" in i.get("file", "") for i in uboot["images"])

def test_device_tree_rebuild_is_byte_identical(tmp_path):
    missing = [t for t in ("dtc", "make") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH to rebuild the device trees (device-tree-compiler)")
    committed = {p.name: p.read_bytes() for p in sorted(FIRMWARE.glob("*.dtb"))}
    copy = tmp_path / "rigs"
    shutil.copytree(RIGS, copy, ignore=shutil.ignore_patterns("build"))
    for name in committed:
        (copy / "firmware" / name).unlink()

    # The documented rebuild command: make -C rigs (its firmware part)
    done = subprocess.run(["make", "-C", str(copy), "firmware"], capture_output=True, text=True)
    assert done.returncode == 0, f"make -C rigs firmware failed:\n{done.stdout}\n{done.stderr}"

    rebuilt = {p.name: p.read_bytes() for p in sorted((copy / "firmware").glob("*.dtb"))}
    assert sorted(rebuilt) == sorted(committed), "the rebuild made a different set of device trees"
    differ = [name for name in committed if rebuilt[name] != committed[name]]
    assert not differ, (
        f"rebuilt device trees differ from the committed ones: {differ}; "
        "run `make -C rigs firmware` and commit the result"
    )
