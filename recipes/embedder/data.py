"""Offline long documents -> token shards with a held-out split by file, and training samples.

Sources (all on a Debian machine without network; see /work/shared/ENVIRONMENT.md):
licence texts, Debian copyright files and changelogs, the Linux kernel documentation
(`linux-doc-6.1`), and the docstrings of the Python standard library. Each file is one
document. Files with identical content are kept once; a file goes to the held-out split when a
hash of its source and path says so, so the split is deterministic and never cuts a document.

`prepare` writes `<out>/{train,heldout}.tokens.npy` (all documents' tokens back to back) and
`<out>/{train,heldout}.docs.json` (source, path, start, length of each) plus `manifest.json`.
`TokenShards` reads them back; `ar_sample` / `qa_sample` cut training samples from them.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_SOURCES: tuple[dict[str, Any], ...] = (
    {"name": "licenses", "kind": "files", "globs": ["/usr/share/common-licenses/*"]},
    {"name": "debian-copyright", "kind": "files", "globs": ["/usr/share/doc/*/copyright"]},
    {
        "name": "debian-changelog",
        "kind": "files",
        "globs": ["/usr/share/doc/*/changelog.Debian.gz", "/usr/share/doc/*/changelog.gz"],
    },
    {
        "name": "linux-doc",
        "kind": "files",
        "globs": [
            "/usr/share/doc/linux-doc-*/Documentation/**/*.rst.gz",
            "/usr/share/doc/linux-doc-*/Documentation/**/*.txt.gz",
            "/usr/share/doc/linux-doc-*/Documentation/**/*.rst",
        ],
    },
    {"name": "python-docstrings", "kind": "python-docstrings", "globs": []},
)
SPLITS = ("train", "heldout")


# ------------------------------------------------------------------------- reading sources


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _python_docstrings(path: Path) -> str:
    """A module's docstrings, each under the name of what it documents."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return ""
    parts = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(f"Module {path.stem}.\n\n{module_doc}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                parts.append(f"{kind} {node.name}:\n{doc}")
    return "\n\n".join(parts)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3")
    return sorted(
        p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts)
    )


def iter_source(source: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(path, text) of every document of one source, in a stable order."""
    if source["kind"] == "python-docstrings":
        for path in _stdlib_files():
            yield str(path), _python_docstrings(path)
        return
    if source["kind"] != "files":
        raise ValueError(f"unknown source kind {source['kind']!r} (files, python-docstrings)")
    seen: set[Path] = set()
    for pattern in source["globs"]:
        anchor = Path(pattern).anchor or "."
        for path in sorted(Path(anchor).glob(str(Path(pattern).relative_to(anchor)))):
            real = path.resolve()
            if real in seen or not path.is_file():
                continue
            seen.add(real)
            yield str(path), _read_text(path)


def is_heldout(source_name: str, path: str, permille: int) -> bool:
    """Deterministic split by file: a hash of (source, path) picks about permille/1000."""
    digest = hashlib.sha256(f"{source_name}\0{path}".encode()).hexdigest()
    return int(digest[:8], 16) % 1000 < permille


# ------------------------------------------------------------------------- preparing shards


def prepare(
    out_dir: str | Path,
    tokenizer_folder: str | Path,
    *,
    sources: list[dict[str, Any]] | tuple[dict[str, Any], ...] = DEFAULT_SOURCES,
    heldout_permille: int = 30,
    max_tokens_per_source: int | None = 8_000_000,
    min_doc_tokens: int = 128,
    max_doc_tokens: int = 65_536,
) -> dict[str, Any]:
    """Tokenize every source with the LLM's tokenizer and write the two splits.

    Documents are cut to `max_doc_tokens` (a few Debian changelogs are 10^5-10^6 tokens and
    would otherwise make up most of the windows) and sources stop at `max_tokens_per_source`.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    tokens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    docs: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    offsets = dict.fromkeys(SPLITS, 0)
    seen_content: set[str] = set()
    summary: dict[str, dict[str, int]] = {}
    for source in sources:
        name = source["name"]
        # A stable pseudo-random file order, so a token cap keeps a spread of files.
        entries = sorted(
            iter_source(source), key=lambda e: hashlib.sha256(e[0].encode()).hexdigest()
        )
        counts = {"files": 0, "tokens": 0, "duplicates": 0, "short": 0}
        for path, text in entries:
            if max_tokens_per_source is not None and counts["tokens"] >= max_tokens_per_source:
                break
            content_hash = hashlib.sha256(text.encode()).hexdigest()
            if content_hash in seen_content:
                counts["duplicates"] += 1
                continue
            seen_content.add(content_hash)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_doc_tokens]
            if len(ids) < min_doc_tokens:
                counts["short"] += 1
                continue
            split = "heldout" if is_heldout(name, path, heldout_permille) else "train"
            tokens[split].append(np.asarray(ids, dtype=dtype))
            docs[split].append(
                {"source": name, "path": path, "start": offsets[split], "length": len(ids)}
            )
            offsets[split] += len(ids)
            counts["files"] += 1
            counts["tokens"] += len(ids)
        summary[name] = counts
    for split in SPLITS:
        flat = np.concatenate(tokens[split]) if tokens[split] else np.zeros(0, dtype=dtype)
        np.save(out / f"{split}.tokens.npy", flat, allow_pickle=False)
        (out / f"{split}.docs.json").write_text(json.dumps(docs[split]))
    manifest = {
        "tokenizer_folder": str(tokenizer_folder),
        "heldout_permille": heldout_permille,
        "max_tokens_per_source": max_tokens_per_source,
        "min_doc_tokens": min_doc_tokens,
        "max_doc_tokens": max_doc_tokens,
        "sources": list(sources),
        "summary": summary,
        "splits": {s: {"documents": len(docs[s]), "tokens": offsets[s]} for s in SPLITS},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


@dataclass
class TokenShards:
    """One split's tokens and document table, memory-mapped."""

    tokens: np.ndarray
    docs: list[dict[str, Any]]

    @classmethod
    def load(cls, data_dir: str | Path, split: str) -> TokenShards:
        data_dir = Path(data_dir)
        if not (data_dir / f"{split}.tokens.npy").is_file():
            raise FileNotFoundError(
                f"no prepared data in {data_dir}; run: python -m recipes.embedder.data --out "
                f"{data_dir} --tokenizer BASE_MODEL_FOLDER"
            )
        tokens = np.load(data_dir / f"{split}.tokens.npy", mmap_mode="r", allow_pickle=False)
        return cls(tokens, json.loads((data_dir / f"{split}.docs.json").read_text()))

    def doc_tokens(self, index: int) -> np.ndarray:
        doc = self.docs[index]
        return self.tokens[doc["start"] : doc["start"] + doc["length"]]

    def long_docs(self, min_length: int) -> list[int]:
        return [i for i, d in enumerate(self.docs) if d["length"] >= min_length]


# ------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One training/eval example: the LLM reads prefix, soft(context), suffix, then target.

    The loss is the next-token loss on `target`; `prefix` and `suffix` are plain tokens (chat
    template and question for QA, empty for autoregressive continuation).
    """

    context: torch.Tensor
    factor: int
    target: torch.Tensor
    prefix: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    suffix: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    kind: str = "ar"
    plan: tuple[tuple[int, int, int], ...] | None = None  # [start, end, k] spans (plan_qa)


def _window(shards: TokenShards, rng: np.random.Generator, length: int) -> np.ndarray:
    """A random window of `length` tokens inside one document (documents weighted by size)."""
    candidates = shards.long_docs(length)
    if not candidates:
        raise ValueError(f"no document has {length} tokens; prepare more data")
    weights = np.array([shards.docs[i]["length"] - length + 1 for i in candidates], dtype=float)
    doc = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
    tokens = shards.doc_tokens(doc)
    start = int(rng.integers(0, len(tokens) - length + 1))
    return np.asarray(tokens[start : start + length], dtype=np.int64)


def ar_sample(
    shards: TokenShards,
    rng: np.random.Generator,
    *,
    context_tokens: tuple[int, int],
    target_tokens: int,
    factors: tuple[int, ...],
) -> Sample:
    """Two-stream AR: compress the text before a cut, predict the `target_tokens` after it."""
    context_len = int(rng.integers(context_tokens[0], context_tokens[1] + 1))
    window = torch.from_numpy(_window(shards, rng, context_len + target_tokens))
    factor = int(factors[int(rng.integers(0, len(factors)))])
    return Sample(window[:context_len], factor, window[context_len:], kind="ar")


_SENTENCE = re.compile(r"[^.!?\n]{20,300}[.!?](?=\s)")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,.:/-]*\d(?![\w])|(?<![\w.])\d(?![\w.])")
_DOC_MARK = "\u2063DOCUMENT\u2063"


class QATemplate:
    """Chat-formatted question around a compressed document, as the server sends it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.has_chat = bool(getattr(tokenizer, "chat_template", None))
        self.end_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(self, question: str, answer: str) -> tuple[list[int], list[int], list[int]]:
        """(prefix ids, suffix ids, target ids) around the document's soft tokens."""
        if self.has_chat:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{_DOC_MARK}\n{question}"}],
                add_generation_prompt=True,
                tokenize=False,
            )
        else:
            text = f"Document: {_DOC_MARK}\nQuestion: {question}\nAnswer:"
            answer = " " + answer
        before, after = text.split(_DOC_MARK)
        enc = self.tokenizer
        return (
            enc(before, add_special_tokens=False)["input_ids"],
            enc(after, add_special_tokens=False)["input_ids"],
            enc(answer, add_special_tokens=False)["input_ids"] + self.end_ids,
        )


def make_question(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """A question whose answer is in `text`: a missing number, or how a sentence continues."""
    # Skip the first sentence: the window may start inside it. A match always ends at its own
    # punctuation, so a sentence cut by the end of the window never matches.
    sentences = [m.group(0).strip() for m in _SENTENCE.finditer(text)][1:]
    sentences = [s for s in sentences if len(s.split()) >= 8]
    if not sentences:
        return None
    with_numbers = [s for s in sentences if _NUMBER.search(s)]
    if with_numbers and rng.random() < 0.5:
        sentence = with_numbers[int(rng.integers(0, len(with_numbers)))]
        matches = list(_NUMBER.finditer(sentence))
        match = matches[int(rng.integers(0, len(matches)))]
        masked = sentence[: match.start()] + "___" + sentence[match.end() :]
        question = (
            f'Which number is missing from this sentence of the document: "{masked}"? '
            "Answer with the number only."
        )
        return question, match.group(0)
    sentence = sentences[int(rng.integers(0, len(sentences)))]
    words = sentence.split()
    cut = int(rng.integers(4, min(8, len(words) - 3) + 1))
    question = (
        f'How does the sentence of the document that starts with "{" ".join(words[:cut])}" '
        "continue? Answer with the rest of the sentence."
    )
    return question, " ".join(words[cut : cut + 16])


def question_window(
    shards: TokenShards,
    rng: np.random.Generator,
    tokenizer: Any,
    *,
    context_tokens: tuple[int, int],
    attempts: int = 20,
) -> tuple[np.ndarray, str, str, str]:
    """A document window of ``context_tokens`` and a synthetic question about it:
    (window ids, its text, question, answer)."""
    for _ in range(attempts):
        context_len = int(rng.integers(context_tokens[0], context_tokens[1] + 1))
        window = _window(shards, rng, context_len)
        text = tokenizer.decode(window.tolist())
        qa = make_question(text, rng)
        if qa is not None:
            return window, text, *qa
    raise ValueError(f"no question could be made in {attempts} windows; is the data prose?")


def qa_sample(
    shards: TokenShards,
    rng: np.random.Generator,
    template: QATemplate,
    *,
    context_tokens: tuple[int, int],
    factors: tuple[int, ...],
    attempts: int = 20,
) -> Sample:
    """A synthetic question about a compressed document window, answered in chat format."""
    window, _, question, answer = question_window(
        shards, rng, template.tokenizer, context_tokens=context_tokens, attempts=attempts
    )
    prefix, suffix, target = template.encode(question, answer)
    factor = int(factors[int(rng.integers(0, len(factors)))])
    return Sample(
        torch.from_numpy(window),
        factor,
        torch.tensor(target),
        torch.tensor(prefix, dtype=torch.long),
        torch.tensor(suffix, dtype=torch.long),
        kind="qa",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the token shards")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="LLM folder (default: prepared SmolLM2)"
    )
    parser.add_argument("--heldout-permille", type=int, default=30)
    parser.add_argument("--max-tokens-per-source", type=int, default=8_000_000)
    parser.add_argument("--max-doc-tokens", type=int, default=65_536)
    args = parser.parse_args(argv)
    tokenizer = args.tokenizer
    if tokenizer is None:
        from vllm_landmark.default_models import prepare_default_llm

        tokenizer = prepare_default_llm()
    manifest = prepare(
        args.out,
        tokenizer,
        heldout_permille=args.heldout_permille,
        max_tokens_per_source=args.max_tokens_per_source,
        max_doc_tokens=args.max_doc_tokens,
    )
    print(json.dumps({"summary": manifest["summary"], "splits": manifest["splits"]}, indent=2))


if __name__ == "__main__":
    main()


def prepare_word_documents(
    out_dir: str | Path, tokenizer_folder: str | Path, docs_dir: Path
) -> Path:
    """The tiny config's data (tests, the GPU device check): the synthetic word documents of
    `vllm_landmark.testing.tiny_llm` written to `docs_dir`, prepared into `out_dir` with a
    quarter of the files held out."""
    from vllm_landmark.testing.tiny_llm import write_word_documents

    docs = write_word_documents(docs_dir)
    sources = [{"name": "synthetic", "kind": "files", "globs": [str(docs / "*.txt")]}]
    prepare(out_dir, tokenizer_folder, sources=sources, heldout_permille=250, min_doc_tokens=64)
    return Path(out_dir)
