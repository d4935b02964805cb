"""Self-distillation of an AHN into a base model (docs/AHN-SPEC.md, "Training (self-distillation)").

- `student`: the teacher and student forward passes of one step and their KL.
- `trainer`: `DistillConfig`, `Distiller` (spans, optimiser, schedule, checkpoints, log).
- `cli`:     `ahn-gguf distill BASE -o AHN_DIR`.
"""
