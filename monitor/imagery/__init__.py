"""Imagery: providers (STAC, DHuS, drop folders) behind one protocol, verified downloads, preparation onto
an area's grid, and the service that records scenes."""
