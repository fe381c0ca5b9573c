"""Compatibility alias: code written for the original HyperLoom imports ``loom.client``."""
