"""Pure architecture knowledge shared by the backends (no KVM, no I/O)."""
