"""PyTorch reference of AHN (docs/AHN-SPEC.md): the oracle every other part of ahn-gguf is tested against.

- `recurrence`: the memory scan, per-token (`naive_scan`) and chunked (`chunked_scan`).
- `functional`: L2 norms, read scale, write gates, readout (output path), native gate rows.
- `config`:     `ReferenceConfig` (base + AHN settings), `AHNConfigError`.
- `model`:      `ReferenceModel` (modes "full" / "window" / "ahn"; parallel and incremental),
                `AHNCache`.
- `loading`:    `load_reference`, `attach_ahn`, `save_ahn`.
"""

from .config import AHNConfigError, ReferenceConfig
from .functional import l2norm, pack_gate_rows, read_scale, readout, write_gates
from .loading import ahn_config, ahn_state_dict, attach_ahn, base_model, load_reference, save_ahn
from .model import MODES, AHNCache, ReferenceModel
from .recurrence import chunked_scan, naive_scan, scan

__all__ = [
    "AHNCache", "AHNConfigError", "MODES", "ReferenceConfig", "ReferenceModel",
    "ahn_config", "ahn_state_dict", "attach_ahn", "base_model", "chunked_scan", "l2norm",
    "load_reference", "naive_scan", "pack_gate_rows", "read_scale", "readout", "save_ahn", "scan",
    "write_gates",
]
