"""Train an ExtensibleEmbedder for a frozen LLM: two-stream AR pre-training, then QA fine-tuning
(whole windows at one factor, ``qa``, or documents planned as the server plans them, ``plan_qa``).

    python -m recipes.embedder.train --config recipes/embedder/configs/cpu_smollm2.json

Every step draws its batch from a generator seeded by (seed, step) and reseeds torch for the
LoRA dropout, so a run stopped at any checkpoint and started again with the same command
continues exactly where it was (the optimizer state travels in the checkpoint). A run also
stops cleanly, after writing a checkpoint, when `max_minutes` of this invocation are spent.

`fit_minutes` sizes a run to a time budget on hardware nobody has timed yet: after
`fit_after_steps` steps (inside the warm-up, so nothing already computed changes) the median
seconds per step so far rescale every stage's step count, keeping their proportions, so that the
cosine schedule ends about `fit_minutes` after this invocation started. The fitted stages are
stored in the checkpoints and a resumed run keeps them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vllm_landmark.compression.embedder import ExtensibleEmbedder, LoraSettings

from .data import QATemplate, Sample, TokenShards, ar_sample, qa_sample
from .objective import load_frozen_llm, target_nll
from .plan_qa import plan_qa_sample, soft_tokens

CONFIG_DIR = Path(__file__).parent / "configs"
TRAINABLE_FACTORS = (2, 4, 8, 16, 32)


@dataclass
class StageConfig:
    """One stage: `task` "ar" (continuation), "qa" (chat QA over a window at one factor) or
    "plan_qa" (chat QA over a document planned as the server plans it); QA tasks are mixed
    with `ar_fraction` AR samples."""

    name: str
    task: str
    steps: int
    ar_fraction: float = 0.0
    lr_scale: float = 1.0


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoints and the final embedder."""

    name: str = "run"
    base_model: str | None = None
    #: a trained embedder folder a new run starts from (its weights, a fresh optimizer and
    #: schedule), e.g. to add a fine-tuning stage to the shipped one; None: a fresh LoRA
    init_from: str | None = None
    data_dir: str | None = None
    output_dir: str | None = None
    num_layers: int = 4
    factors: tuple[int, ...] = (2, 4, 8)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    context_tokens: tuple[int, int] = (256, 256)
    plan_compression: tuple[float, float] = (2.0, 8.0)  # plan_qa: document tokens / budget
    target_tokens: int = 64
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig("pretrain", "ar", 100)])
    save_every: int = 25
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_samples: int = 8
    max_minutes: float | None = None
    fit_minutes: float | None = None
    fit_after_steps: int = 40
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.factors = tuple(sorted(int(k) for k in self.factors))
        self.context_tokens = (int(self.context_tokens[0]), int(self.context_tokens[1]))
        self.stages = [s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages]
        bad = [k for k in self.factors if k not in TRAINABLE_FACTORS]
        if bad or not self.factors:
            raise ValueError(f"factors {list(self.factors)}: choose from {TRAINABLE_FACTORS}")
        for stage in self.stages:
            if stage.task not in ("ar", "qa", "plan_qa") or stage.steps < 1:
                raise ValueError(f"stage {stage.name!r}: task must be ar|qa|plan_qa and steps >= 1")
        low, high = (float(r) for r in self.plan_compression)
        if not 1.0 <= low <= high:
            raise ValueError(
                f"plan_compression {list(self.plan_compression)}: need 1 <= low <= high"
            )
        self.plan_compression = (low, high)
        if self.fit_minutes is not None and not 2 <= self.fit_after_steps <= self.warmup_steps:
            raise ValueError(
                f"fit_after_steps={self.fit_after_steps} must lie in [2, warmup_steps="
                f"{self.warmup_steps}] (a fit after the warm-up would change steps already taken)"
            )

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> StageConfig:
        """The stage that step (1-based) belongs to."""
        end = 0
        for stage in self.stages:
            end += stage.steps
            if step <= end:
                return stage
        return self.stages[-1]

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to min_lr_ratio * lr over all stages."""
        scale = self.stage_at(step).lr_scale
        if step <= self.warmup_steps:
            return self.lr * scale * step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * scale * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        data.pop("_comment", None)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def tiny_config(
    base_model: str | Path, data_dir: str | Path, output_dir: str | Path, **overrides: Any
) -> TrainConfig:
    """`configs/tiny.json` (a few steps, LoRA on 2 layers) on these folders."""
    return TrainConfig.load(
        CONFIG_DIR / "tiny.json",
        base_model=str(base_model),
        data_dir=str(data_dir),
        output_dir=str(output_dir),
        **overrides,
    )


def fit_stages(stages: list[StageConfig], step: int, new_total: int) -> list[StageConfig]:
    """Stages rescaled to `new_total` steps in their proportions, steps 1..step unchanged.

    Stages that ended at or before `step` keep their length, the stage holding `step` ends
    after it, and every later stage keeps at least one step.
    """
    old_total = sum(s.steps for s in stages)
    new_total = max(new_total, step + 1)
    ends, old_end = [], 0
    for index, stage in enumerate(stages):
        old_end += stage.steps
        if old_end <= step:
            end = old_end
        else:
            end = round(old_end * new_total / old_total)
            end = max(end, step + 1, (ends[-1] if ends else 0) + 1)
        if index == len(stages) - 1:
            end = max(new_total, (ends[-1] if ends else 0) + 1)
        ends.append(end)
    starts = [0, *ends[:-1]]
    return [
        dataclasses.replace(stage, steps=end - start)
        for stage, start, end in zip(stages, starts, ends, strict=True)
    ]


def default_output_dir(config: TrainConfig) -> Path:
    from vllm_landmark.default_models import default_cache_dir

    return default_cache_dir() / "embedder-runs" / config.name


# ------------------------------------------------------------------------- checkpoints


def _checkpoints(output: Path) -> list[Path]:
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    output: Path,
    embedder: ExtensibleEmbedder,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write step-N atomically (temp folder, then rename); keep the newest `keep`."""
    root = output / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-{state['step']:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    embedder.save_pretrained(tmp / "embedder", training=state.get("training"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------- the trainer


class Trainer:
    """Holds the frozen LLM, the embedder, the optimizer and the data of one run."""

    def __init__(self, config: TrainConfig, *, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.base_model is None:
            from vllm_landmark.default_models import prepare_default_llm

            config.base_model = str(prepare_default_llm())
        config.base_model = os.path.expanduser(config.base_model)
        self.output = Path(config.output_dir or default_output_dir(config)).expanduser()
        self.output.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = getattr(torch, config.dtype)
        self.llm = load_frozen_llm(config.base_model, config.device, self.dtype)
        if config.data_dir is None:
            raise ValueError(
                "data_dir is not set (prepare data with python -m recipes.embedder.data)"
            )
        self.train_data = TokenShards.load(config.data_dir, "train")
        self.heldout_data = TokenShards.load(config.data_dir, "heldout")
        self.template = None
        if any(stage.task in ("qa", "plan_qa") for stage in config.stages):
            from transformers import AutoTokenizer

            self.template = QATemplate(AutoTokenizer.from_pretrained(config.base_model))
        self.step, self.elapsed_before, self.samples_seen = 0, 0.0, 0
        self.fit: dict[str, Any] | None = None
        # Provenance for init_from runs: the run this one continued (its own training record),
        # read once (it travels in every checkpoint's and the final embedder's training info).
        self.started_from: dict[str, Any] | None = None
        if config.init_from is not None:
            start = Path(config.init_from).expanduser() / "embedder_config.json"
            earlier = json.loads(start.read_text()).get("training") if start.exists() else None
            self.started_from = {"folder": config.init_from, "training": earlier}
        self.embedder, self.optimizer = self._build_or_resume()
        self.metrics_path = self.output / "metrics.jsonl"
        self._truncate_metrics()

    def _new_optimizer(self, embedder: ExtensibleEmbedder) -> torch.optim.Optimizer:
        params = [p for p in embedder.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _build_or_resume(self) -> tuple[ExtensibleEmbedder, torch.optim.Optimizer]:
        config = self.config
        checkpoints = _checkpoints(self.output)
        if checkpoints:
            latest = checkpoints[-1]
            embedder = ExtensibleEmbedder.from_pretrained(
                latest / "embedder",
                config.base_model,
                trainable=True,
                device=self.device,
                dtype=self.dtype,
            )
            optimizer = self._new_optimizer(embedder)
            optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
            state = json.loads((latest / "state.json").read_text())
            self.step, self.elapsed_before = state["step"], state["elapsed_s"]
            self.samples_seen = state["samples_seen"]
            self.fit = state.get("fit")
            if self.fit:
                config.stages = [StageConfig(**stage) for stage in self.fit["stages"]]
            print(f"resuming from {latest} (step {self.step})", file=sys.stderr)
            return embedder, optimizer
        if config.init_from is not None:
            return self._start_from_trained(Path(config.init_from).expanduser())
        embedder = ExtensibleEmbedder.from_base(
            config.base_model,
            num_layers=config.num_layers,
            factors=config.factors,
            lora=LoraSettings(
                r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout
            ),
            device=self.device,
            dtype=self.dtype,
        )
        torch.manual_seed(config.seed)  # LoRA A matrices are initialised at random
        embedder.attach_lora()
        return embedder, self._new_optimizer(embedder)

    def _start_from_trained(self, folder: Path) -> tuple[ExtensibleEmbedder, torch.optim.Optimizer]:
        """A trained embedder's weights with its LoRA live again, and a fresh optimizer."""
        config = self.config
        embedder = ExtensibleEmbedder.from_pretrained(
            folder, config.base_model, trainable=True, device=self.device, dtype=self.dtype
        )
        trained = embedder.config
        have = (list(trained.factors), trained.num_layers, trained.lora.r, trained.lora.alpha)
        want = (list(config.factors), config.num_layers, config.lora_r, config.lora_alpha)
        if have != want:
            raise ValueError(
                f"init_from {folder}: it has (factors, num_layers, lora_r, lora_alpha) {have}, "
                f"the config {want}; set the config's to match"
            )
        # Its factor_help record measured those weights, not the ones this run will write.
        embedder.config = dataclasses.replace(trained, factor_help=None)
        print(f"starting from the trained embedder {folder}", file=sys.stderr)
        return embedder, self._new_optimizer(embedder)

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resumed from."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] <= self.step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------- data

    def batch_for(self, step: int) -> list[Sample]:
        """The samples of a step: a pure function of (seed, step) and the stage."""
        config = self.config
        stage = config.stage_at(step)
        rng = np.random.default_rng([config.seed, step])
        samples = []
        for _ in range(config.batch_size):
            if stage.task == "plan_qa" and rng.random() >= stage.ar_fraction:
                samples.append(
                    plan_qa_sample(
                        self.train_data,
                        rng,
                        self.template,
                        context_tokens=config.context_tokens,
                        factors=config.factors,
                        compression=config.plan_compression,
                    )
                )
            elif stage.task == "qa" and rng.random() >= stage.ar_fraction:
                samples.append(
                    qa_sample(
                        self.train_data,
                        rng,
                        self.template,
                        context_tokens=config.context_tokens,
                        factors=config.factors,
                    )
                )
            else:
                samples.append(
                    ar_sample(
                        self.train_data,
                        rng,
                        context_tokens=config.context_tokens,
                        target_tokens=config.target_tokens,
                        factors=config.factors,
                    )
                )
        return samples

    def eval_samples(self) -> list[Sample]:
        """Fixed held-out AR samples (each scored at every factor)."""
        rng = np.random.default_rng([self.config.seed, 10**9])
        length = self.config.context_tokens[1]
        return [
            ar_sample(
                self.heldout_data,
                rng,
                context_tokens=(length, length),
                target_tokens=self.config.target_tokens,
                factors=self.config.factors,
            )
            for _ in range(self.config.eval_samples)
        ]

    # ----------------------------------------------------------------- steps

    def loss(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean target NLL over the batch's tokens, and each sample's mean NLL."""
        soft = soft_tokens(self.embedder, self.llm, samples)
        sums, counts = target_nll(self.llm, samples, soft)
        return sums.sum() / counts.sum(), (sums / counts).detach()

    def train_step(self, step: int, samples: list[Sample]) -> tuple[float, torch.Tensor]:
        config = self.config
        torch.manual_seed(config.seed * 1_000_003 + step)
        self.embedder.train()
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        loss, per_sample = self.loss(samples)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), per_sample

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out continuation loss per factor (fixed samples)."""
        self.embedder.eval()
        samples = self.eval_samples()
        result = {}
        for factor in self.config.factors:
            batch = [dataclasses.replace(s, factor=factor) for s in samples]
            total, count = 0.0, 0
            for start in range(0, len(batch), self.config.batch_size):
                chunk = batch[start : start + self.config.batch_size]
                soft = self.embedder([s.context for s in chunk], [s.factor for s in chunk])
                sums, counts = target_nll(self.llm, chunk, soft)
                total, count = total + float(sums.sum()), count + int(counts.sum())
            result[str(factor)] = total / count
        return result

    def training_info(self) -> dict[str, Any]:
        manifest_path = Path(self.config.data_dir) / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        info = {
            "recipe": "recipes/embedder (two-stream AR + QA fine-tuning)",
            "config": self.config.to_dict(),
            "steps": self.step,
            "total_steps": self.config.total_steps,
            "samples_seen": self.samples_seen,
            "elapsed_s": round(self.elapsed_before, 1),
            "data": {"splits": manifest.get("splits"), "summary": manifest.get("summary")},
        }
        if self.started_from is not None:
            info["started_from"] = self.started_from
        return info

    def _checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed_before,
            "samples_seen": self.samples_seen,
            "fit": self.fit,
            "training": self.training_info(),
        }
        return save_checkpoint(
            self.output, self.embedder, self.optimizer, state, self.config.keep_checkpoints
        )

    def _fit_schedule(self, step_times: list[float], data_times: list[float], spent: float) -> None:
        """Rescale the stages so the schedule ends `fit_minutes` after this call started.

        A step of a later stage is costed as the measured step minus the measured batch
        building time plus that stage's own batch building time (QA samples tokenize their
        question on the CPU), timed here on a few of its batches.
        """
        config = self.config
        skip = 2 if len(step_times) > 4 else 0  # the first steps include CUDA warm-up
        s_per_step = float(np.median(step_times[skip:]))
        data_now = float(np.median(data_times[skip:]))
        cost, weight, end = 0.0, 0, 0
        for stage in config.stages:
            start, end = end, end + stage.steps
            left_in_stage = end - max(start, self.step)
            if left_in_stage <= 0:
                continue
            stage_cost = s_per_step
            if start >= self.step:
                probe = range(start + 1, min(end, start + 3) + 1)
                began = time.perf_counter()
                for probe_step in probe:
                    self.batch_for(probe_step)
                data_stage = (time.perf_counter() - began) / len(probe)
                stage_cost = max(s_per_step - data_now + data_stage, 0.5 * s_per_step)
            cost += stage_cost * left_in_stage
            weight += left_in_stage
        mean_cost = cost / weight
        left_s = 60 * config.fit_minutes - spent
        # Reserve 5 % for checkpoints and jitter, and the held-out evaluations (each about
        # one forward per batch of eval samples and factor, costed as a full step each).
        left_steps = 0.95 * left_s / mean_cost
        if config.eval_every:
            eval_batches = len(config.factors) * -(-config.eval_samples // config.batch_size)
            left_steps /= 1 + eval_batches / config.eval_every
        old_total = config.total_steps
        config.stages = fit_stages(config.stages, self.step, self.step + int(left_steps))
        self.fit = {
            "at_step": self.step,
            "s_per_step": round(s_per_step, 4),
            "mean_step_cost_s": round(mean_cost, 4),
            "batch_building_s": round(data_now, 4),
            "fit_minutes": config.fit_minutes,
            "spent_s": round(spent, 1),
            "planned_total_steps": old_total,
            "stages": [dataclasses.asdict(stage) for stage in config.stages],
        }
        plan = ", ".join(f"{s.name} {s.steps}" for s in config.stages)
        print(
            f"fit: {s_per_step:.3f} s/step (median of steps {skip + 1}-{len(step_times)} of "
            f"this call, {data_now:.3f} s of it building the batch; {mean_cost:.3f} s/step "
            f"expected over the stages left), {left_s:.0f} s left of fit_minutes="
            f"{config.fit_minutes}: "
            f"{old_total} -> {config.total_steps} steps ({plan})",
            file=sys.stderr,
            flush=True,
        )

    def run(self, stop_after_steps: int | None = None, final_on_stop: bool = False) -> Path | None:
        """Train until the last step (returns the final folder) or a stop (returns None).

        `final_on_stop` also writes `final/` when the run stops early (time or step limit), so
        that a call that cannot come back still leaves an exportable folder; its
        `embedder_config.json` says how many of the planned steps were done.
        """
        config = self.config
        total = config.total_steps
        started = time.monotonic()
        last_tick, done_here = started, 0
        step_times: list[float] = []
        data_times: list[float] = []
        ema = None
        bar = tqdm(
            total=total,
            initial=self.step,
            desc=config.name,
            disable=not self.progress,
            mininterval=1.0 if sys.stderr.isatty() else 20.0,
            dynamic_ncols=True,
        )
        stopped = False
        while self.step < total:
            if stop_after_steps is not None and done_here >= stop_after_steps:
                stopped = True
                break
            if config.max_minutes is not None and step_times:
                spent = time.monotonic() - started
                if spent + 1.5 * max(step_times[-5:]) > 60 * config.max_minutes:
                    stopped = True
                    break
            step = self.step + 1
            samples = self.batch_for(step)
            data_times.append(time.monotonic() - last_tick)
            loss, per_sample = self.train_step(step, samples)
            now = time.monotonic()
            step_times.append(now - last_tick)
            self.elapsed_before += now - last_tick
            last_tick = now
            self.step, done_here = step, done_here + 1
            self.samples_seen += len(samples)
            ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            by_factor: dict[str, list[float]] = {}
            for sample, value in zip(samples, per_sample.tolist(), strict=True):
                by_factor.setdefault(f"{sample.kind}@{sample.factor}", []).append(value)
            record = {
                "type": "train",
                "step": step,
                "stage": config.stage_at(step).name,
                "loss": round(loss, 5),
                "by_kind_factor": {k: round(sum(v) / len(v), 4) for k, v in by_factor.items()},
                "lr": config.lr_at(step),
                "samples_seen": self.samples_seen,
                "elapsed_s": round(self.elapsed_before, 2),
            }
            self._log(record)
            if (
                config.fit_minutes is not None
                and self.fit is None
                and step >= config.fit_after_steps
                and done_here >= min(3, config.fit_after_steps)
                and step < total
            ):
                self._fit_schedule(step_times, data_times, now - started)
                total = config.total_steps
                bar.total = total
                bar.refresh()
            if step in (1, 2, 3, 5, 10, 20) or step % 100 == 0:
                recent = step_times[-20:]
                bar.write(
                    f"step {step}/{total} [{record['stage']}] loss {loss:.3f} (ema {ema:.3f}) "
                    f"lr {record['lr']:.2e} {step_times[-1]:.3f} s/step (median of last "
                    f"{len(recent)}: {float(np.median(recent)):.3f}), "
                    f"{time.monotonic() - started:.0f} s in this call"
                )
            bar.update(1)
            bar.set_postfix(
                loss=f"{ema:.3f}", stage=record["stage"], s_per_step=f"{step_times[-1]:.1f}"
            )
            if config.eval_every and (step % config.eval_every == 0 or step == total):
                heldout = self.evaluate()
                self._log({"type": "eval", "step": step, "heldout_loss": heldout})
                bar.write(f"step {step}: held-out loss by factor {heldout}")
                last_tick = time.monotonic()  # evaluation time is not training time
            if step % config.save_every == 0 or step == total:
                self._checkpoint()
                last_tick = time.monotonic()
        bar.close()
        if stopped:
            if (
                not _checkpoints(self.output)
                or _checkpoints(self.output)[-1].name != f"step-{self.step:06d}"
            ):
                self._checkpoint()
            print(
                f"stopped at step {self.step}/{total}; run the same command again to resume",
                file=sys.stderr,
            )
            if final_on_stop and self.step > 0:
                final = self.output / "final"
                shutil.rmtree(final, ignore_errors=True)
                info = {**self.training_info(), "stopped_early": True}
                self.embedder.save_pretrained(final, training=info)
                print(
                    f"final/ written from step {self.step} (stopped early): {final}",
                    file=sys.stderr,
                )
            return None
        final = self.output / "final"
        shutil.rmtree(final, ignore_errors=True)
        self.embedder.save_pretrained(final, training=self.training_info())
        print(f"done: {final}", file=sys.stderr)
        return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--config", required=True, help="JSON config (see recipes/embedder/configs)"
    )
    parser.add_argument("--base-model", help="LLM folder (default: config, else prepared SmolLM2)")
    parser.add_argument("--data-dir", help="prepared data (python -m recipes.embedder.data)")
    parser.add_argument("--output-dir", help="run folder: checkpoints/, metrics.jsonl, final/")
    parser.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this")
    parser.add_argument("--stop-after-steps", type=int, help="stop after N steps in this call")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: config)")
    parser.add_argument(
        "--fit-minutes", type=float, help="rescale the stages to end after this (see above)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override any config field, e.g. --set batch_size=4 (repeatable)",
    )
    parser.add_argument(
        "--final-on-stop",
        action="store_true",
        help="also write final/ when stopped early by --max-minutes or --stop-after-steps",
    )
    args = parser.parse_args(argv)
    sets = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected FIELD=JSON")
        try:
            sets[key] = json.loads(value)
        except json.JSONDecodeError:
            sets[key] = value  # a bare string
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(sets) - known:
        parser.error(f"--set: unknown fields {sorted(set(sets) - known)}")
    path = Path(args.config)
    if not path.exists() and (CONFIG_DIR / args.config).exists():
        path = CONFIG_DIR / args.config
    overrides = {
        "base_model": args.base_model,
        "data_dir": args.data_dir,
        "output_dir": args.output_dir,
        "max_minutes": args.max_minutes,
        "threads": args.threads,
        "device": args.device,
        "fit_minutes": args.fit_minutes,
    }
    config = TrainConfig.load(path, **{**overrides, **sets})  # --set wins
    if config.data_dir:
        config.data_dir = os.path.expanduser(config.data_dir)
    Trainer(config).run(stop_after_steps=args.stop_after_steps, final_on_stop=args.final_on_stop)


if __name__ == "__main__":
    main()
