"""For the VM lane tests: a line in pytest's output whether or not it captures
(boot and run times are reported, never asserted)."""

from __future__ import annotations


def report_line(request, line: str) -> None:
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    cap = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None:  # e.g. -p no:terminal
        print(line)
    elif cap is not None:
        with cap.global_and_fixture_disabled():
            tr.write_line(line)
    else:
        tr.write_line(line)
