"""kvmrig: run bare-metal guest code under real Linux KVM and check what it does."""

__version__ = "0.1.0"
