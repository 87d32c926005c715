"""Shipped workload descriptions (YAML) and weights. Installed as ``archsim.workload_files``."""
