"""Encoder + trainable heads for M3 self-distillation; frozen-encoder feature cache; export.

The encoder comes from a BGE-M3-layout folder through :class:`vllm_landmark.retrieval.m3.
M3Encoder` (same tokenizer, prompts, pooling and special-token handling as at inference).
When it is frozen, the last hidden states of every training text are computed once and kept
in a memory-mapped cache on disk (resumable); steps then only run the two heads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vllm_landmark.hf_folders import find_model_folder
from vllm_landmark.retrieval.m3 import M3Encoder
from vllm_landmark.retrieval.m3_folder import HEAD_FILES

from .config import M3TrainConfig

#: Files of a model folder that an exported full folder copies (the heads are written new).
_SKIP_ON_COPY = {name for files in HEAD_FILES.values() for name in files}


def resolve_model(model: str) -> Path:
    """``"default"`` -> the prepared default retriever; else the folder, or a repo id's folder
    in the local Hugging Face cache (M3Encoder says what is wrong when it is neither)."""
    if model == "default":
        from vllm_landmark.default_models import prepare_default_retriever

        return prepare_default_retriever()
    folder = find_model_folder(model)
    return folder if folder is not None else Path(model).expanduser()


def load_encoder(model: str | Path, device: str = "cpu") -> M3Encoder:
    """The folder's encoder; a missing head is fine here (the recipe trains new ones)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="BGE-M3 folder .* has no")
        return M3Encoder(resolve_model(str(model)), device=device)


class M3Heads(torch.nn.Module):
    """``sparse_linear`` (hidden -> 1) and ``colbert_linear`` (hidden -> colbert_dim)."""

    def __init__(self, hidden: int, colbert_dim: int | None = None) -> None:
        super().__init__()
        self.sparse_linear = torch.nn.Linear(hidden, 1)
        self.colbert_linear = torch.nn.Linear(hidden, colbert_dim or hidden)

    @classmethod
    def random(cls, hidden: int, colbert_dim: int | None, seed: int) -> M3Heads:
        """nn.Linear's default initialisation (as FlagEmbedding's), from a seeded generator."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(hidden, colbert_dim)

    @classmethod
    def from_encoder(cls, encoder: M3Encoder) -> M3Heads:
        """Copies of the heads the encoder's folder has (both must be there)."""
        if encoder.sparse_linear is None or encoder.colbert_linear is None:
            raise ValueError(f"{encoder.path} lacks a head: use init_heads='random'")
        heads = cls(encoder.hidden_size, encoder.colbert_linear.out_features)
        heads.sparse_linear.load_state_dict(encoder.sparse_linear.state_dict())
        heads.colbert_linear.load_state_dict(encoder.colbert_linear.state_dict())
        return heads.float()

    def save_bge_m3(self, folder: str | Path) -> None:
        """Write ``sparse_linear.pt`` and ``colbert_linear.pt`` (Linear state dicts, float32)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("sparse_linear", "colbert_linear"):
            module = getattr(self, name)
            state = {
                k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()
            }
            tmp = folder / f".{name}.pt.tmp"
            torch.save(state, tmp)
            os.replace(tmp, folder / f"{name}.pt")


@dataclass
class Encoded:
    """A padded batch of encoder outputs: ``hidden (n, L, H)``, ``ids`` and ``mask (n, L)``."""

    hidden: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor


def pad_batch(
    rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int, device: torch.device
) -> Encoded:
    """Stack ``(ids, hidden)`` rows of different lengths into an :class:`Encoded`."""
    width = max(len(ids) for ids, _ in rows)
    hidden_size = rows[0][1].shape[1]
    hidden = torch.zeros(len(rows), width, hidden_size, dtype=torch.float32)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (ids, h) in enumerate(rows):
        n = len(ids)
        ids_t[r, :n] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        hidden[r, :n] = torch.from_numpy(np.asarray(h, dtype=np.float32))
        mask[r, :n] = 1
    return Encoded(hidden.to(device), ids_t.to(device), mask.to(device))


class TextEncoder:
    """Runs the (possibly LoRA-wrapped) encoder on texts with the folder's prompts."""

    def __init__(self, encoder: M3Encoder, config: M3TrainConfig) -> None:
        self.encoder = encoder
        self.config = config
        self.model = encoder.model
        self.device = encoder.device

    def tokenize(self, texts: Sequence[str], kind: str) -> list[list[int]]:
        """Token ids with the ``query``/``passage`` prompt, truncated to the kind's limit."""
        limit = self.config.max_query_length if kind == "query" else self.config.max_passage_length
        limit = min(limit, self.encoder.max_length)
        return self.encoder.tokenize(
            list(texts), max_length=limit, truncation=True, prompt_name=kind
        )

    def forward_ids(self, ids: Sequence[Sequence[int]]) -> Encoded:
        """One padded forward (gradients flow when the model has trainable LoRA weights)."""
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.encoder.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return Encoded(hidden.float(), input_ids, mask)

    def encode(self, texts: Sequence[str], kind: str) -> Encoded:
        """Tokenize and forward in one batch."""
        return self.forward_ids(self.tokenize(texts, kind))


class FeatureCache:
    """Last hidden states of a fixed list of ``(kind, text)`` items, in memory-mapped files.

    Built once, chunk by chunk (a restart continues after the last finished chunk); keyed by
    the model folder, the tokenization limits and the item list, so a change rebuilds it.
    """

    CHUNK = 256

    def __init__(self, folder: Path, text_encoder: TextEncoder, items: Sequence[tuple[str, str]]):
        self.folder = Path(folder)
        self.te = text_encoder
        self.items = list(items)
        self.index = {item: i for i, item in enumerate(self.items)}
        self.dtype = np.float16 if text_encoder.config.cache_dtype == "float16" else np.float32
        self.hidden_size = text_encoder.encoder.hidden_size

    def _fingerprint(self) -> str:
        c = self.te.config
        digest = hashlib.sha256()
        for part in (
            str(self.te.encoder.path.resolve()),
            c.max_query_length,
            c.max_passage_length,
            c.cache_dtype,
            json.dumps(self.te.encoder.prompts, sort_keys=True),
        ):
            digest.update(f"{part}\n".encode())
        weights = self.te.encoder.path / "model.safetensors"
        if weights.is_file():
            stat = weights.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        for kind, text in self.items:
            digest.update(f"{kind}\t{text}\n".encode())
        return digest.hexdigest()

    def build(self) -> None:
        """Tokenize everything, then encode the chunks not yet done (progress bar)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        fingerprint = self._fingerprint()
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        ids: list[list[int]] = [[] for _ in self.items]
        for kind in ("query", "passage"):
            where = [i for i, (k, _) in enumerate(self.items) if k == kind]
            if where:
                rows = self.te.tokenize([self.items[i][1] for i in where], kind)
                for i, row in zip(where, rows, strict=True):
                    ids[i] = row
        lengths = np.array([len(row) for row in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        total = int(offsets[-1])
        if meta.get("fingerprint") != fingerprint:
            meta = {"fingerprint": fingerprint, "done_chunks": 0, "tokens": total, "seconds": 0.0}
            for name in ("hidden.bin", "ids.bin"):
                (self.folder / name).unlink(missing_ok=True)
        mode = "r+" if (self.folder / "hidden.bin").is_file() else "w+"
        self.hidden = np.memmap(
            self.folder / "hidden.bin", dtype=self.dtype, mode=mode, shape=(total, self.hidden_size)
        )
        self.ids = np.memmap(self.folder / "ids.bin", dtype=np.int32, mode=mode, shape=(total,))
        self.offsets = offsets
        n_chunks = (len(self.items) + self.CHUNK - 1) // self.CHUNK
        done = int(meta["done_chunks"])
        budget = self.te.config.encode_batch_tokens
        bar = tqdm(total=total, initial=int(offsets[min(done * self.CHUNK, len(self.items))]),
                   desc="encoding features", unit="tok", disable=done >= n_chunks)  # fmt: skip
        start_time = time.monotonic()
        with torch.inference_mode():
            for chunk in range(done, n_chunks):
                members = range(chunk * self.CHUNK, min((chunk + 1) * self.CHUNK, len(self.items)))
                order = sorted(members, key=lambda i: -lengths[i])
                start = 0
                while start < len(order):
                    width = int(lengths[order[start]])
                    size = max(1, min(64, budget // max(width, 1)))
                    group = order[start : start + size]
                    out = self.te.forward_ids([ids[i] for i in group])
                    hidden = out.hidden.cpu().numpy()
                    for r, i in enumerate(group):
                        a, b = offsets[i], offsets[i + 1]
                        self.hidden[a:b] = hidden[r, : b - a].astype(self.dtype)
                        self.ids[a:b] = ids[i]
                    bar.update(int(sum(lengths[i] for i in group)))
                    start += size
                self.hidden.flush()
                self.ids.flush()
                meta["done_chunks"] = chunk + 1
                now = time.monotonic()
                meta["seconds"] = round(meta.get("seconds", 0.0) + now - start_time, 1)
                start_time = now
                tmp = meta_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(meta))
                os.replace(tmp, meta_file)
        bar.close()
        self.meta = meta

    def get(self, kind: str, texts: Sequence[str]) -> Encoded:
        """The cached states of ``texts`` (all must be in the item list), padded."""
        rows = []
        for text in texts:
            i = self.index[(kind, text)]
            a, b = self.offsets[i], self.offsets[i + 1]
            rows.append((self.ids[a:b], self.hidden[a:b]))
        return pad_batch(rows, self.te.encoder.pad_token_id, self.te.device)


def export_folder(
    encoder: M3Encoder, heads: M3Heads, out: str | Path, *, merged_model: torch.nn.Module | None
) -> Path:
    """A complete BGE-M3-layout folder at ``out``: the base folder's files + the new heads.

    With ``merged_model`` (LoRA merged into the encoder), its weights replace the base ones.
    """
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in encoder.path.iterdir():
        if item.name in _SKIP_ON_COPY or item.name.startswith("."):
            continue
        if item.name == "landmark_prepared.json":
            continue
        if merged_model is not None and item.suffix == ".safetensors":
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)
    if merged_model is not None:
        merged_model.save_pretrained(out, safe_serialization=True)
    heads.save_bge_m3(out)
    return out
