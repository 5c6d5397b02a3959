"""monitor: watches land parcels from space and reports unpermitted construction."""

__version__ = "0.1.0"
