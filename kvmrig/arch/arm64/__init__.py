"""arm64: register names, debug control registers, ESR decoding."""
