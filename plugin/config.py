"""`LandmarkConfig`: the one place that holds the plugin's settings.

The vLLM flags (`--landmark-*`), the `landmark` CLI and the Python API all fill this object.
It travels to every vLLM process inside the model's Hugging Face config (see `engine.py`), as
the plain JSON `to_dict` writes (choices in their flag syntax).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeAlias

#: Retrieval rounds a question may take by default: the first and up to four hops
#: (retrieval/hops.py).
DEFAULT_ROUNDS = 5

#: Scaling factors an embedder may use: k document tokens become one soft token.
ALLOWED_FACTORS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

#: Attribute of the Hugging Face config that carries the settings to every process.
HF_CONFIG_KEY = "landmark_config"
#: Attribute of the Hugging Face config that remembers the wrapped model's architectures.
HF_BASE_ARCHITECTURES_KEY = "landmark_base_architectures"


class LandmarkConfigError(ValueError):
    """A setting has a value the plugin cannot use; the message names it and the allowed range."""


class EmbedderName(Enum):
    """The k>1 embedder choices that are names, not folders."""

    #: The bundled trained embedder made for the served model if there is one, else none (no
    #: compression: documents over their share are cut to their best spans at k=1).
    AUTO = "auto"
    #: The untrained mean of each k consecutive token embeddings. Only used when asked for by
    #: name (it reads worse than leaving the text out).
    MEAN_BASELINE = "mean-baseline"


class RetrieverName(Enum):
    """The retriever choices that are names, not folders."""

    #: The bundled multilingual-e5-small with trained heads (the default): prepared into a
    #: folder the first time a document needs scores (`LandmarkConfig.retriever_folder`).
    DEFAULT = "default"


#: An embedder choice: a name or a trained embedder folder.
EmbedderSetting: TypeAlias = EmbedderName | Path
#: A retriever choice: a name or a BGE-M3-layout folder (None in the config: no retrieval).
RetrieverSetting: TypeAlias = RetrieverName | Path

AUTO_EMBEDDER = EmbedderName.AUTO
MEAN_BASELINE = EmbedderName.MEAN_BASELINE
DEFAULT_RETRIEVER = RetrieverName.DEFAULT
#: Flag/CLI word for "no retriever" (None in the config).
NO_RETRIEVER = "none"


def _parse_choice(
    field: str, value: Any, names: type[EmbedderName] | type[RetrieverName]
) -> EmbedderName | RetrieverName | Path:
    if isinstance(value, names):
        return value
    if isinstance(value, os.PathLike):
        return Path(value).expanduser()
    if not isinstance(value, str) or not value.strip():
        raise LandmarkConfigError(
            f"{field}={value!r}: expected one of {[n.value for n in names]} or a folder"
        )
    text = value.strip()
    for name in names:
        if text == name.value:
            return name
    return Path(text).expanduser()


def parse_embedder(value: str | os.PathLike[str] | EmbedderName) -> EmbedderSetting:
    """The embedder choice a flag, CLI or JSON value means: 'auto', 'mean-baseline' or a folder."""
    return _parse_choice("embedder", value, EmbedderName)  # type: ignore[return-value]


def parse_retriever(
    value: str | os.PathLike[str] | RetrieverName | None,
) -> RetrieverSetting | None:
    """The retriever choice a flag, CLI or JSON value means: 'default', a folder, or None
    (also written 'none')."""
    if value is None or (isinstance(value, str) and value.strip() == NO_RETRIEVER):
        return None
    return _parse_choice("retriever", value, RetrieverName)  # type: ignore[return-value]


def setting_text(value: EmbedderSetting | RetrieverSetting | None) -> str | None:
    """A choice in its flag/JSON syntax (the inverse of `parse_embedder`/`parse_retriever`)."""
    if value is None:
        return None
    return value.value if isinstance(value, Enum) else str(value)


@dataclass(frozen=True)
class LandmarkConfig:
    """Settings of the plugin (a plain validated value: building one prepares nothing).

    budget: cap on the soft tokens one document may take in the prompt. None: no cap, a
        document is read whole whenever the prompt fits the window (see planning/document.py).
    factor: force one scaling factor k for every document that is over its share.
    factors: the factors the planner may choose from (a subset of ALLOWED_FACTORS).
    embedder: AUTO_EMBEDDER (the bundled trained embedder for the served model if any, else
        no compression), MEAN_BASELINE (untrained mean pooling, for experiments) or a trained
        embedder folder.
    retriever: DEFAULT_RETRIEVER (the default: the bundled multilingual-e5-small with trained
        heads, prepared and loaded the first time a document does not fit its room), a
        BGE-M3-layout folder used to rank spans, or None: no retrieval (an over-long document
        keeps its head and tail).
    output_reserve: tokens kept free for the answer when a request does not say max_tokens
        (at most a quarter of the window).
    max_document_tokens: hard limit on one document's length in LLM tokens.
    max_request_documents: the most documents one request may carry.
    max_request_document_tokens: the most LLM tokens all documents of one request may hold
        together (a request over either limit is refused with a 413 before any retrieval).
    max_document_chars: hard limit on one document's length in characters, checked before
        tokenizing so oversized input costs nothing.
    retrieval_rounds: the most retrieval rounds one question may take (1: one round; more:
        what the best sentence names is looked for in turn, retrieval/hops.py).
    file_store: folder where the Files API keeps uploaded files (text + metadata) so they
        survive a restart. None: files live in memory only.
    file_store_bytes: the most bytes of file text the Files API store holds (all keys).
    max_file_bytes: the largest upload (and chat request body) the server reads, in bytes.

    `embedder` and `retriever` also take their flag syntax ("auto", "mean-baseline",
    "default", a folder as text); it is parsed once, here, into the typed choice.
    """

    budget: int | None = None
    factor: int | None = None
    factors: tuple[int, ...] = ALLOWED_FACTORS
    embedder: EmbedderSetting = AUTO_EMBEDDER
    retriever: RetrieverSetting | None = DEFAULT_RETRIEVER
    max_document_tokens: int = 1 << 20
    max_request_documents: int = 64
    max_request_document_tokens: int = 1 << 20
    max_document_chars: int = 8 << 20
    output_reserve: int = 256
    retrieval_rounds: int = DEFAULT_ROUNDS
    file_store: str | None = None
    file_store_bytes: int = 256 << 20
    max_file_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(sorted(set(int(k) for k in self.factors))))
        object.__setattr__(self, "embedder", parse_embedder(self.embedder))
        object.__setattr__(self, "retriever", parse_retriever(self.retriever))
        self.validate()

    def validate(self) -> None:
        """Raise LandmarkConfigError naming the first invalid setting."""
        if not self.factors:
            raise LandmarkConfigError(f"factors is empty; allowed factors are {ALLOWED_FACTORS}")
        bad = [k for k in self.factors if k not in ALLOWED_FACTORS]
        if bad:
            raise LandmarkConfigError(
                f"factors {bad} are not allowed; choose from {ALLOWED_FACTORS}"
            )
        if self.factor is not None and self.factor not in ALLOWED_FACTORS:
            raise LandmarkConfigError(
                f"factor={self.factor} is not allowed; choose one of {ALLOWED_FACTORS}"
            )
        if self.budget is not None and self.budget < 1:
            raise LandmarkConfigError(f"budget={self.budget} must be a positive token count")
        for name in ("max_request_documents", "max_request_document_tokens", "retrieval_rounds"):
            if getattr(self, name) < 1:
                raise LandmarkConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.max_document_tokens < 1:
            raise LandmarkConfigError(
                f"max_document_tokens={self.max_document_tokens} must be positive"
            )
        if self.output_reserve < 0:
            raise LandmarkConfigError(f"output_reserve={self.output_reserve} must be >= 0")
        if self.max_document_chars < 1:
            raise LandmarkConfigError(
                f"max_document_chars={self.max_document_chars} must be positive"
            )
        if self.file_store_bytes < 1 or self.max_file_bytes < 1:
            raise LandmarkConfigError(
                f"file_store_bytes={self.file_store_bytes} and max_file_bytes="
                f"{self.max_file_bytes} must be positive"
            )
        if isinstance(self.embedder, Path) and not self.embedder.is_dir():
            raise LandmarkConfigError(
                f"embedder={str(self.embedder)!r} is neither {AUTO_EMBEDDER.value!r}, "
                f"{MEAN_BASELINE.value!r} nor an existing folder"
            )
        if isinstance(self.retriever, Path) and not self.retriever.is_dir():
            raise LandmarkConfigError(
                f"retriever={str(self.retriever)!r} is neither {DEFAULT_RETRIEVER.value!r} nor "
                "an existing folder (BGE-M3 layout expected)"
            )

    def retriever_folder(self) -> Path | None:
        """The retriever's folder; None without retrieval.

        DEFAULT_RETRIEVER is prepared here, on first use (converted once per machine and
        cached; later calls in the process return at once): servers and engines start without
        it, and requests whose documents fit never touch it.
        """
        if self.retriever is DEFAULT_RETRIEVER:
            from .default_models import default_retriever_folder

            return default_retriever_folder()
        return self.retriever

    def with_default_models(self) -> LandmarkConfig:
        """This config with DEFAULT_RETRIEVER replaced by its prepared folder, prepared now
        (for callers that load the retriever at start-up, like `landmark proxy`)."""
        if self.retriever is not DEFAULT_RETRIEVER:
            return self
        from .default_models import prepare_default_retriever

        return dataclasses.replace(self, retriever=prepare_default_retriever())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (choices in their flag syntax); `from_dict` reads them back."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["factors"] = list(self.factors)
        data["embedder"] = setting_text(self.embedder)
        data["retriever"] = setting_text(self.retriever)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LandmarkConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LandmarkConfigError(
                f"unknown landmark settings {unknown}; known: {sorted(known)}"
            )
        if "factors" in data:
            data["factors"] = tuple(data["factors"])
        return cls(**data)
