"""Train the sparse and multi-vector heads (optionally LoRA on the encoder) by M3 self-distillation.

    python -m recipes.m3.train --config default --data ~/.cache/vllm-landmark/m3-data \\
        --output-dir ~/.cache/vllm-landmark/m3-runs/default --heads-out plugin/data/retriever_heads

A run folder holds ``checkpoint.pt`` (resumed automatically; ``--restart`` starts over),
``log.jsonl`` (one line per ``log_every`` steps), the frozen-encoder feature cache
(``features/``) and, at the end, ``heads/`` (``sparse_linear.pt``, ``colbert_linear.pt``,
``training.json`` with the command, data, steps and loss curve).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import M3TrainConfig
from .data import Batch, length_grouped_batches, load_triples, make_batch
from .losses import colbert_scores, colbert_vectors, m3_loss, pool, sparse_scores, token_weights
from .model import Encoded, FeatureCache, M3Heads, TextEncoder, export_folder, load_encoder

#: Settings that must not change when a run is resumed.
_RESUME_KEYS = (
    "model", "data", "init_heads", "colbert_dim", "lora", "lora_r", "temperature",
    "teacher_weights", "loss_weights", "batch_size", "negatives", "same_language_batches",
    "max_query_length", "max_passage_length", "max_train_queries", "seed", "lr",
)  # fmt: skip


class Trainer:
    """One M3 self-distillation run (see the module docstring)."""

    def __init__(self, config: M3TrainConfig) -> None:
        if not config.output_dir:
            raise ValueError("output_dir is required")
        self.config = config
        self.run_dir = Path(config.output_dir).expanduser()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)

        self.encoder = load_encoder(config.model, config.device)
        self.text_encoder = TextEncoder(self.encoder, config)
        model = self.encoder.model
        self.lora_model = None
        if config.lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets),
            )
            self.lora_model = get_peft_model(model, lora)
            self.lora_model.train()
            self.text_encoder.model = self.lora_model
        else:
            model.requires_grad_(False)
            model.eval()

        hidden = self.encoder.hidden_size
        if config.init_heads == "folder":
            self.heads = M3Heads.from_encoder(self.encoder)
        else:
            self.heads = M3Heads.random(hidden, config.colbert_dim, config.seed)
        self.heads.to(self.encoder.device)
        self.unused_ids = sorted(self.encoder.unused_token_ids)

        self.triples = load_triples(config.data, "train", config.max_train_queries, config.seed)
        self.cache: FeatureCache | None = None
        if not config.lora and config.feature_cache:
            items = {("query", t.query) for t in self.triples}
            items |= {("passage", p) for t in self.triples for p in (t.pos, *t.negs)}
            self.cache = FeatureCache(self.run_dir / "features", self.text_encoder, sorted(items))
            self.cache.build()
        pos_ids = self.text_encoder.tokenize([t.pos for t in self.triples], "passage")
        self.lengths = [len(ids) for ids in pos_ids]
        self.langs = [t.lang for t in self.triples]

        params = [{"params": list(self.heads.parameters()), "lr": config.lr}]
        if self.lora_model is not None:
            lora_params = [p for p in self.lora_model.parameters() if p.requires_grad]
            params.append({"params": lora_params, "lr": config.encoder_lr})
        self.optimizer = torch.optim.AdamW(params, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    # ------------------------------------------------------------------------------------------

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10% at ``max_steps``."""
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / max(1, c.warmup_steps)
        progress = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This epoch's batches of triple indices (a pure function of seed and epoch)."""
        c = self.config
        return length_grouped_batches(
            self.lengths,
            c.batch_size,
            seed=c.seed * 1_000_003 + epoch,
            groups=self.langs if c.same_language_batches else None,
            mega_batches=c.length_group_batches,
        )

    def make_batch(self, indices: list[int], epoch: int) -> Batch:
        """Texts of a batch; hard negatives sampled per (seed, epoch, query)."""
        seed = self.config.seed
        return make_batch(
            self.triples,
            indices,
            self.config.negatives,
            lambda qid: random.Random(f"{seed}:{epoch}:{qid}"),
        )

    def encode(self, kind: str, texts: list[str]) -> Encoded:
        """Encoder outputs: from the feature cache, or a forward (with gradients under LoRA)."""
        if self.cache is not None:
            return self.cache.get(kind, texts)
        if self.lora_model is None:
            with torch.no_grad():
                return self.text_encoder.encode(texts, kind)
        return self.text_encoder.encode(texts, kind)

    def scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Dense, sparse and colbert scores ``(n_queries, n_passages)`` of a batch."""
        q = self.encode("query", batch.queries)
        p = self.encode("passage", batch.passages)
        mode = self.encoder.pooling
        dense = pool(q.hidden, q.mask, mode) @ pool(p.hidden, p.mask, mode).T
        sl, cl = self.heads.sparse_linear, self.heads.colbert_linear
        q_w = token_weights(q.hidden, q.ids, q.mask, sl, self.unused_ids)
        p_w = token_weights(p.hidden, p.ids, p.mask, sl, self.unused_ids)
        q_c, q_cm = colbert_vectors(q.hidden, q.mask, cl)
        p_c, p_cm = colbert_vectors(p.hidden, p.mask, cl)
        return {
            "dense": dense,
            "sparse": sparse_scores(q_w, q.ids, p_w, p.ids),
            "colbert": colbert_scores(q_c, q_cm, p_c, p_cm),
        }

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The M3 loss of a batch and its parts."""
        c = self.config
        return m3_loss(
            self.scores(batch),
            batch.group,
            temperature=c.temperature,
            teacher_weights=c.teacher_weights,
            loss_weights=c.loss_weights,
        )

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step; returns the loss parts."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss(batch)
        loss.backward()
        trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        parts["loss"] = float(loss.detach())
        parts["lr"] = self.scheduler.get_last_lr()[0]
        return parts

    # ------------------------------------------------------------------------------------------

    @property
    def checkpoint_file(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly (written atomically)."""
        state = {
            "config": self.config.as_dict(),
            "heads": self.heads.state_dict(),
            "lora": None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "history": self.history,
            "seconds": self.seconds,
            "torch_rng": torch.get_rng_state(),
        }
        if self.lora_model is not None:
            from peft import get_peft_model_state_dict

            state["lora"] = get_peft_model_state_dict(self.lora_model)
        tmp = self.checkpoint_file.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_file)

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint.pt`` if there is one; False if there is none."""
        if not self.checkpoint_file.is_file():
            return False
        state = torch.load(self.checkpoint_file, map_location="cpu", weights_only=True)
        saved = state["config"]
        changed = [k for k in _RESUME_KEYS if saved.get(k) != getattr(self.config, k)]
        if changed:
            raise ValueError(
                f"{self.checkpoint_file} was made with other settings ({', '.join(changed)}); "
                "use another output_dir or --restart"
            )
        self.heads.load_state_dict(state["heads"])
        if self.lora_model is not None and state["lora"] is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.lora_model, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.history, self.seconds = list(state["history"]), float(state["seconds"])
        torch.set_rng_state(state["torch_rng"])
        return True

    def train(self, *, progress: bool = True, stop_at: int | None = None) -> list[dict[str, float]]:
        """Run until ``max_steps`` (or ``stop_at``, with a checkpoint there); returns the history.

        Continues from where :meth:`load_checkpoint` left off.
        """
        c = self.config
        end = c.max_steps if stop_at is None else min(stop_at, c.max_steps)
        window: dict[str, list[float]] = defaultdict(list)
        bar = tqdm(total=c.max_steps, initial=self.step, desc="m3 heads", disable=not progress)
        log = (self.run_dir / "log.jsonl").open("a", encoding="utf-8")
        try:
            while self.step < end:
                batches = self.epoch_batches(self.epoch)
                while self.batch_in_epoch < len(batches) and self.step < end:
                    start = time.monotonic()
                    batch = self.make_batch(batches[self.batch_in_epoch], self.epoch)
                    parts = self.train_step(batch)
                    self.seconds += time.monotonic() - start
                    self.step += 1
                    self.batch_in_epoch += 1
                    for k, v in parts.items():
                        window[k].append(v)
                    bar.update(1)
                    if self.step % c.log_every == 0 or self.step == c.max_steps:
                        row = {k: sum(v) / len(v) for k, v in window.items()}
                        row.update(step=self.step, epoch=self.epoch, seconds=round(self.seconds, 1))
                        self.history.append(row)
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        window.clear()
                        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['teacher_acc']:.2f}")
                    if self.step % c.save_every == 0 or self.step == end:
                        self.save_checkpoint()
                if self.batch_in_epoch >= len(batches):
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:
            bar.close()
            log.close()
        return self.history

    def export_heads(self, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the heads (BGE-M3 file names) and ``training.json`` into ``out``."""
        out = Path(out).expanduser()
        self.heads.save_bge_m3(out)
        record = self.training_record()
        record.update(extra or {})
        (out / "training.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return out

    def export_folder(self, out: str | Path) -> Path:
        """A complete BGE-M3 folder: the base model (LoRA merged, if any) + the trained heads."""
        merged = None
        if self.lora_model is not None:
            merged = self.lora_model.merge_and_unload()
            self.lora_model = None
        return export_folder(self.encoder, self.heads, out, merged_model=merged)

    def training_record(self) -> dict[str, Any]:
        """What reproduces the run: command, settings, data, steps, time and loss curve."""
        import transformers

        data = Path(self.config.data).expanduser()
        manifest = data / "manifest.json" if data.is_dir() else None
        data_info: dict[str, Any] = {"path": str(self.config.data), "triples": len(self.triples)}
        if manifest is not None and manifest.is_file():
            m = json.loads(manifest.read_text())
            data_info.update(command=m.get("command"), files=m.get("files"), stats=m.get("stats"))
            data_info["packages"] = m.get("packages")
        marker = self.encoder.path / "landmark_prepared.json"
        base = {"path": str(self.encoder.path)}
        if marker.is_file():
            base = json.loads(marker.read_text())
        base.pop("heads", None)
        first = self.history[0] if self.history else {}
        last = self.history[-1] if self.history else {}
        argv = ["python", "-m", "recipes.m3.train", *sys.argv[1:]]
        per_epoch = max(1, len(self.epoch_batches(0)))
        return {
            "command": " ".join(shlex.quote(a) for a in argv),
            "config": self.config.as_dict(),
            "base_model": base,
            "data": data_info,
            "steps": self.step,
            "epochs": round(self.epoch + self.batch_in_epoch / per_epoch, 3),
            "train_seconds": round(self.seconds, 1),
            "feature_cache": (
                {k: self.cache.meta.get(k) for k in ("tokens", "seconds")} if self.cache else None
            ),
            "first_loss": first.get("loss"),
            "final_loss": last.get("loss"),
            "loss_curve": self.history,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "threads": torch.get_num_threads(),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="JSON file or a name in configs/")
    parser.add_argument("--model", help="BGE-M3-layout folder ('default': the default retriever)")
    parser.add_argument("--data", help="build_data folder or a FlagEmbedding-style .jsonl")
    parser.add_argument("--output-dir", help="run folder (checkpoints, log, features)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--heads-out", help="also write the heads + training.json here")
    parser.add_argument("--export-folder", help="also write a full BGE-M3 folder here")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = M3TrainConfig.from_file(
        args.config,
        model=args.model,
        data=args.data,
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        threads=args.threads,
    )
    trainer = Trainer(config)
    if not args.restart and trainer.load_checkpoint():
        print(f"resumed at step {trainer.step} from {trainer.checkpoint_file}", file=sys.stderr)
    trainer.train()
    out = trainer.export_heads(Path(config.output_dir).expanduser() / "heads")
    print(f"heads: {out}")
    if args.heads_out:
        print(f"heads: {trainer.export_heads(args.heads_out)}")
    if args.export_folder:
        print(f"folder: {trainer.export_folder(args.export_folder)}")


if __name__ == "__main__":
    main()
