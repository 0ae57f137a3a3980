"""Support for tests, evaluation and recipes: tiny models built on the spot, real servers.

- `tiny_llm`: a tiny random Llama (or Qwen2 / Mistral) with a trained BPE tokenizer;
- `tokenizer_families`: tiny decoders with the tokenizer layouts of real model families;
- `tiny_m3`: a tiny XLM-R encoder in BGE-M3 folder layout, and text to feed it;
- `documents`: deterministic documents of a given length in LLM tokens;
- `server_process`: start and stop `landmark serve` / `vllm serve` on a free port.

Everything runs offline on the CPU; nothing here is used when serving.
"""
