"""`python -m kvmrig` is the same as the `kvmrig` command."""

from kvmrig.cli import main

raise SystemExit(main())
