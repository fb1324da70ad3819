"""Guest code coverage: which lines and functions of the firmware a run executed.

- lines.py     DWARF line tables, functions and leaders of an ELF image (pyelftools)
- leaders.py   basic blocks of code without line tables (capstone, recursive descent)
- collect.py   recording during a run (the session's hook), expect.executed / not_executed
- report.py    a run's (or several runs') lines and functions; --coverage-root remapping
- lcov.py, cobertura.py, output.py   the files CI tools read, and the terminal summary
"""
