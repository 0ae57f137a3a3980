"""A tiny random Llama with an offline BPE tokenizer and a ChatML template, built at test time.

Big enough for vLLM's CPU attention (head_dim 32), small enough to start in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|landmark_document|>"]

_CORPUS_WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "which",
    "are",
    "be",
    "it",
    "an",
    "or",
    "document",
    "long",
    "question",
    "answer",
    "lighthouse",
    "railway",
    "station",
    "keeper",
    "year",
    "light",
    "beacon",
    "north",
    "south",
    "east",
    "west",
    "river",
    "mountain",
    "valley",
    "city",
    "village",
    "harbour",
    "ship",
    "storm",
    "winter",
    "summer",
    "tower",
    "stone",
    "bridge",
    "road",
    "train",
    "engine",
    "signal",
    "track",
    "line",
    "number",
    "first",
    "second",
    "third",
    "built",
    "opened",
    "closed",
    "history",
    "record",
    "report",
    "name",
    "called",
    "known",
    "during",
    "after",
    "before",
    "between",
    "about",
    "what",
    "when",
    "where",
    "who",
    "how",
    "many",
    "capital",
    "France",
    "Paris",
    "Berlin",
]


def _corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(3000):
        words = [rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(5, 20))]
        lines.append(
            " ".join(words) + rng.choice([".", "?", "!", ","]) + f" {rng.randint(0, 2000)}"
        )
    return lines


def write_word_documents(folder: Path, count: int = 24) -> Path:
    """Prose-like files of sentences with numbers, in the tiny tokenizer's words (the embedder
    recipe's training documents in tests and the device check)."""
    import random

    words = [w for w in _CORPUS_WORDS if w.isalpha()]
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sentences = []
        for _ in range(rng.randint(30, 60)):
            chosen = [rng.choice(words) for _ in range(rng.randint(8, 16))]
            chosen.insert(rng.randint(1, len(chosen) - 1), str(rng.randint(10, 1999)))
            sentences.append(" ".join(chosen).capitalize() + ".")
        (folder / f"doc{index:02d}.txt").write_text(" ".join(sentences))
    return folder


ARCHITECTURES = ("llama", "qwen2", "mistral")


def build_tiny_llama(
    folder: Path,
    *,
    seed: int = 0,
    max_position_embeddings: int = 2048,
    architecture: str = "llama",
) -> Path:
    """Write config, random safetensors weights, tokenizer and chat template into `folder`.

    `architecture` picks the decoder family (llama, qwen2 or mistral); all share the tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|landmark_document|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)

    return save_tiny_decoder(
        folder,
        tokenizer,
        seed=seed,
        max_position_embeddings=max_position_embeddings,
        architecture=architecture,
    )


def save_tiny_decoder(
    folder: Path,
    tokenizer,
    *,
    seed: int = 0,
    max_position_embeddings: int = 2048,
    architecture: str = "llama",
    heads: int = 2,
    kv_heads: int = 1,
    bias: bool = False,
) -> Path:
    """Random weights of a 2-layer decoder for `tokenizer`'s vocabulary, saved into `folder`.

    `heads` attention heads of 32 (vLLM's CPU attention), `kv_heads` key/value heads; `bias`
    (Llama only) gives every projection a random bias, so a bias added twice or never shows.
    """
    import torch
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=heads * 32,
        intermediate_size=heads * 64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=32,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **({"attention_bias": True, "mlp_bias": True} if bias else {}),
    )
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():  # larger logits margins make greedy decoding robust to float noise
        model.lm_head.weight.mul_(8.0)
        if bias:
            for name, param in model.named_parameters():
                if name.endswith(".bias"):
                    param.normal_(0, 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    data = json.loads((folder / "config.json").read_text())
    data.setdefault("rope_theta", 10000.0)
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    return folder


def greedy_with_soft_tokens(reference, prompt_ids, is_soft, soft, new_tokens: int) -> list[int]:
    """Transformers' greedy tokens for a prompt whose placeholder positions hold ``soft``.

    The reference for "the engine reads the same soft prompt": the prompt's token embeddings
    with the rows at ``is_soft`` replaced by ``soft``, exactly ``new_tokens`` generated.
    """
    import torch

    with torch.no_grad():
        embeds = reference.get_input_embeddings()(prompt_ids)
        embeds[is_soft] = soft
        generated = reference.generate(
            inputs_embeds=embeds[None],
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return generated[0].tolist()
