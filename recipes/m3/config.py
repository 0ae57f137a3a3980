"""Settings of an M3 self-distillation run (one dataclass; JSON files in ``configs/``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class M3TrainConfig:
    """Everything a run needs. Paths may use ``~``; ``model="default"`` is the default retriever.

    The score of a (query, passage) pair is ``s / temperature`` for each of dense, sparse and
    multi-vector; the teacher is ``softmax(sum(teacher_weights * s) / temperature)`` over all
    passages of the batch (in-batch + hard negatives). Each head gets InfoNCE towards the
    positive plus the KL towards the teacher, weighted by ``loss_weights`` (BGE-M3 paper:
    ``w = (1, 0.3, 1)`` for both).
    """

    model: str = "default"
    data: str = ""
    output_dir: str = ""
    # Heads: "random" (nn.Linear's default init, seeded) or "folder" (the model folder's own).
    init_heads: str = "random"
    colbert_dim: int | None = None
    # Encoder: frozen (features cached once) unless LoRA is on.
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    feature_cache: bool = True
    cache_dtype: str = "float16"
    # Loss.
    temperature: float = 0.02
    teacher_weights: list[float] = field(default_factory=lambda: [1.0, 0.3, 1.0])
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 0.3, 1.0])
    # Batches: queries per batch, hard negatives per query (group = 1 + negatives).
    batch_size: int = 16
    negatives: int = 7
    same_language_batches: bool = True
    length_group_batches: int = 32
    max_query_length: int = 64
    max_passage_length: int = 256
    max_train_queries: int | None = None
    # Optimisation.
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 1000
    grad_clip: float = 1.0
    # Running.
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    encode_batch_tokens: int = 8192
    save_every: int = 100
    log_every: int = 10

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> M3TrainConfig:
        """Read a JSON config (``tiny``/``default`` name a file in ``configs/``)."""
        path = Path(path)
        if not path.suffix and not path.exists():
            path = CONFIG_DIR / f"{path}.json"
        values = json.loads(path.read_text())
        values.pop("_comment", None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> M3TrainConfig:
        """Build from a dict, rejecting unknown keys (typos must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown M3 config keys: {sorted(unknown)}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise ``ValueError`` for settings that cannot work."""
        if self.init_heads not in ("random", "folder"):
            raise ValueError(f"init_heads must be 'random' or 'folder', not {self.init_heads!r}")
        if len(self.teacher_weights) != 3 or len(self.loss_weights) != 3:
            raise ValueError("teacher_weights and loss_weights are (dense, sparse, colbert)")
        if self.temperature <= 0 or self.batch_size < 1 or self.negatives < 0:
            raise ValueError("temperature > 0, batch_size >= 1 and negatives >= 0 are needed")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError("cache_dtype must be float16 or float32")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)
