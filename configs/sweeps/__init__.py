"""Shipped design-space sweeps (YAML). Installed as ``archsim.configs.sweeps``."""
