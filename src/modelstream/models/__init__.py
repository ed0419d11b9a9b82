"""Ready-made models to name in a registry's `object`."""
