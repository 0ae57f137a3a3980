"""Tiny random decoders with the tokenizer layouts of real model families, built at test time.

Each family has its real special-token layout and chat template, and a small vocabulary
trained on the same corpus: what matters to the plugin is how documents are marked in the
prompt and how text around them tokenizes, not the weights.
- gpt2: byte-level BPE whose only special token is `<|endoftext|>` (BOS = EOS = UNK);
- sentencepiece: Llama-2 style, `<unk> <s> </s>` only, Metaspace word-start markers;
- llama3: byte-level BPE with `<|begin_of_text|>`, header tokens, `<|eot_id|>` and reserved
  special tokens;
- qwen2: byte-level BPE, `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (ChatML);
- gemma: SentencePiece-style pieces without a dummy prefix, `<pad> <eos> <bos> <unk>`,
  `<start_of_turn>` / `<end_of_turn>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vllm_landmark.testing.tiny_llm import _corpus, save_tiny_decoder

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content']"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role'])"
    " + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "byte-level" or "sentencepiece" (Metaspace pieces)
    specials: tuple[str, ...]
    roles: dict[str, str]  # bos_token / eos_token / unk_token / pad_token -> special token
    template: str
    prepend_scheme: str = "first"  # Metaspace only: "first" (Llama 2) or "never" (Gemma)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "gpt2",
            "byte-level",
            ("<|endoftext|>",),
            {
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            },
            PLAIN_TEMPLATE,
        ),
        Family(
            "sentencepiece",
            "sentencepiece",
            ("<unk>", "<s>", "</s>"),
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
            LLAMA2_TEMPLATE,
        ),
        Family(
            "llama3",
            "byte-level",
            (
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ),
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
            LLAMA3_TEMPLATE,
        ),
        Family(
            "qwen2",
            "byte-level",
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            CHATML_TEMPLATE,
        ),
        Family(
            "gemma",
            "sentencepiece",
            ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
            {
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
            },
            GEMMA_TEMPLATE,
            prepend_scheme="never",
        ),
    )
}


def build_family_model(name: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama whose tokenizer has the layout of family `name`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    family = FAMILIES[name]
    if family.kind == "byte-level":
        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        bpe = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in family.specials else None))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=family.prepend_scheme)
        bpe.decoder = decoders.Metaspace(prepend_scheme=family.prepend_scheme)
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=list(family.specials),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **family.roles)
    tokenizer.chat_template = family.template
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return save_tiny_decoder(folder, tokenizer, seed=seed)
