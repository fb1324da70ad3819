"""lcov tracefiles: written, read back, merged; genhtml (Debian's lcov) renders them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kvmrig.coverage import lcov
from kvmrig.coverage.report import FileCoverage, Report, remap, remapped
from kvmrig.errors import UsageError
from kvmrig.merge import merge_files


def _report(hits: dict[int, int], fn: int = 1) -> Report:
    r = Report(runs=1)
    r.files["src/a.c"] = FileCoverage(dict(hits), {"main": (3, fn), "never": (9, 0)})
    return r


def test_round_trip():
    text = lcov.dumps(_report({3: 1, 4: 0, 9: 0}))
    assert "SF:src/a.c" in text and "DA:4,0" in text and "LH:1" in text and "FNH:1" in text
    back = lcov.loads(text)
    assert back.files["src/a.c"].lines == {3: 1, 4: 0, 9: 0}
    assert back.files["src/a.c"].functions == {"main": (3, 1), "never": (9, 0)}


def test_merge_adds_counts(tmp_path):
    a, b = tmp_path / "a.info", tmp_path / "b.info"
    a.write_text(lcov.dumps(_report({3: 1, 4: 0})))
    b.write_text(lcov.dumps(_report({3: 1, 4: 1, 5: 0}, fn=0)))
    out = tmp_path / "all.info"
    line = merge_files(out, [a, b])
    assert "2 of 3 lines" in line
    merged = lcov.read(out).files["src/a.c"]
    assert merged.lines == {3: 2, 4: 1, 5: 0}
    assert merged.functions["main"] == (3, 1)


def test_lcov_2_function_records_are_read():
    text = "TN:\nSF:x.c\nFN:3,7,main\nFNDA:2,main\nDA:3,2\nend_of_record\n"
    assert lcov.loads(text).files["x.c"].functions == {"main": (3, 2)}


def test_not_lcov_names_file_and_line():
    with pytest.raises(UsageError, match=r"in.info:2: .*DA:x"):
        lcov.loads("SF:a.c\nDA:x,1\n", "in.info")
    with pytest.raises(UsageError, match="outside a source file"):
        lcov.loads("DA:1,1\n", "in.info")


def test_merge_refuses_mixed_kinds(tmp_path):
    (tmp_path / "a.info").write_text("")
    with pytest.raises(UsageError, match=r"\.info"):
        merge_files(tmp_path / "out.info", [tmp_path / "a.info", tmp_path / "b.xml"])


def test_remap():
    assert remap("x86/a.c", ["rigs"]) == "rigs/x86/a.c"
    assert remap("/build/src/a.c", ["/build=/home/me"]) == "/home/me/src/a.c"
    assert remap("/build/src/a.c", ["rigs"]) == "/build/src/a.c"          # absolute: left alone
    assert remap("/buildx/a.c", ["/build=/y"]) == "/buildx/a.c"           # only whole components
    r = remapped(_report({3: 1}), ["/x=/y", "top"])
    assert list(r.files) == ["top/src/a.c"]


def test_genhtml_accepts_the_tracefile(tmp_path):
    genhtml = shutil.which("genhtml")
    if genhtml is None:
        pytest.skip("needs genhtml (Debian package lcov, installed by scripts/setup.sh)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.c").write_text("\n".join(f"int line{i};" for i in range(1, 12)) + "\n")
    info = tmp_path / "coverage.info"
    info.write_text(lcov.dumps(_report({3: 1, 4: 0, 9: 0})))
    out = tmp_path / "html"
    done = subprocess.run([genhtml, "-q", "-o", str(out), str(info)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (out / "src" / "a.c.gcov.html").read_text()
    assert "lineCov" in page and "lineNoCov" in page     # line 3 covered, line 4 not
