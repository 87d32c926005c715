"""archsim: a cycle-level simulator of hybrid digital/analog (PCM) AI accelerators - accuracy,
energy, latency, area and cycle counts from one chip YAML and one workload.

The Python API (for notebooks)::

    import archsim
    net, params = archsim.import_onnx("model.onnx")         # network + weights (initializers)
    logits = archsim.fp32_logits(net, params, x_nchw)        # FP32 reference, the model's layout
    print(archsim.mapping_table(archsim.load_mapping("pcm_hybrid", "model.onnx")))
    result = archsim.run("pcm_hybrid", "model.onnx", accuracy=False)   # timing, energy, area
    result = archsim.run("pcm_hybrid", "model.onnx", dataset="cifar10", seeds=2)  # + accuracy
    both = archsim.compare("pcm_hybrid", "digital_fp32", "model.onnx", accuracy=False)
    print(both.table())
"""

from __future__ import annotations

from .network import fp32_logits
from .onnx_import import import_onnx
from .simulate import CompareResult, RunResult, compare, load, load_mapping, mapping_table, run


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

__all__ = ["__version__", "import_onnx", "fp32_logits", "run", "compare", "load", "load_mapping",
           "mapping_table", "RunResult", "CompareResult"]
