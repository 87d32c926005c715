"""archsim: cycle-level simulator of hybrid digital/analog (PCM) AI accelerators."""

from __future__ import annotations


def _version() -> str:
    """One source: setup.cfg's ``version``, through the installed metadata (or setup.cfg itself
    when the package runs from a source tree without being installed)."""
    from importlib import metadata
    try:
        return metadata.version("archsim")
    except metadata.PackageNotFoundError:
        import configparser
        from pathlib import Path
        cfg = configparser.ConfigParser()
        cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
        return cfg.get("metadata", "version", fallback="0+unknown")


__version__ = _version()
