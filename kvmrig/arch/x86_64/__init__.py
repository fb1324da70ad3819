"""x86_64: register names, GDT, page tables, debug registers, boot states."""
