"""Shipped chip descriptions (YAML). Installed as ``archsim.configs`` so the package runs without a checkout."""
