"""LongBench (v1, LongBench-E) and local-suite predictions against an endpoint or offline engine.

    python -m eval.longbench.pred --data-dir DATA --config-dir LongBench/config \\
        --base-url http://localhost:8000/v1 --mode full --out pred/smollm2-full

Modes:

* ``full``: the benchmark's prompt with the context pasted, middle-truncated to
  ``--max-length`` model tokens (LongBench's rule), chat template unless the data set skips it.
* ``plugin``: the context goes as a ``document`` content part (the plugin compresses it), the
  instructions and question around it as text. ``--budget N`` picks each document's factor
  client-side exactly as the server would with ``--landmark-budget N`` (smallest allowed ``k``
  with ``ceil(n / k) <= N``) and sends it as the part's ``factor``, so one server serves any
  budget; ``--factor K`` forces one. Data sets that skip the chat template are sent with a
  pass-through template (the server needs ``--trust-request-chat-template``), unless
  ``--always-chat-template``.
  ``--server-plans`` instead sends the item's question as the document's ``query`` and no
  factor: a server started with ``--landmark-retriever`` and ``--landmark-budget`` then plans
  span by span (retrieved spans near raw, the rest compressed).
* ``retrieval-only``: only the top retrieved spans of the context (``--budget`` tokens of them,
  ``--retriever lexical|m3``, ``--retriever-model DIR|default``) are pasted as the context.
* ``truncate``: the context alone is middle-truncated to ``--budget`` model tokens (LongBench's
  rule), then pasted: the plain baseline at the same budget as the two modes above.

Output: ``OUT/<dataset>.jsonl`` (``pred``, ``answers``, ``all_classes``, ``length`` as the
published script writes, plus ``_id``, token counts, latency and the plugin's ``landmark``
block) and ``OUT/run.json`` (the settings of each run). Score with ``python -m
eval.longbench.score --pred-dir OUT`` (or ``eval.suite.score`` for the local suite).

Reruns skip items already in the output (``--redo-errors`` retries those the server refused).
An endpoint that fails mid-run (refused connection, timeout, 5xx) stops the run with a message;
everything written so far stays and the same command resumes. Exit codes: 0 done, 1 some items
failed, 2 bad arguments/data, 3 endpoint failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eval.longbench.backends import (
    EndpointBackend,
    EndpointError,
    Generation,
    GenerationRequest,
    ItemError,
    OfflineBackend,
)
from eval.longbench.data import MissingDataError, PredictionFile, item_id, load_items, warn
from eval.longbench.metrics import CATEGORIES, LONGBENCH_E_DATASETS
from eval.longbench.prompts import (
    PASSTHROUGH_CHAT_TEMPLATE,
    BenchmarkConfig,
    ConfigError,
    default_max_length,
    document_content,
    find_config_dir,
    format_prompt,
    load_config,
    middle_truncate,
    split_template,
    stops_at_newline,
    uses_chat_template,
)
from eval.longbench.retrieval import RetrieverUnavailable, SpanRetriever, make_retriever

MODES = ("full", "plugin", "retrieval-only", "truncate")
LONGBENCH_V1 = tuple(name for names in CATEGORIES.values() for name in names)
#: Item fields copied into each prediction line (besides pred/answers/all_classes/length).
CARRIED_FIELDS = ("language", "task", "target_length", "depth")


class RunAborted(Exception):
    """The run stopped early (endpoint failure); partial results are on disk."""


@dataclass(frozen=True)
class PredSettings:
    """How prompts are built; the same for every data set of a run."""

    mode: str = "full"
    max_length: int = 7500
    budget: int | None = None
    factor: int | None = None
    factors: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    always_chat_template: bool = False
    server_plans: bool = False


def load_tokenizer(name_or_path: str) -> Any:
    """A Hugging Face tokenizer from a local folder or the local HF cache; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception as exc:
        raise ConfigError(
            f"tokenizer {name_or_path!r} not found locally ({type(exc).__name__}). Truncation "
            "counts the model's own tokens: pass --tokenizer with a model folder, or a name "
            "already in your Hugging Face cache (nothing is downloaded)."
        ) from exc


def newline_token_id(tokenizer: Any) -> int:
    """Id of the newline token (the last token of ``encode("\\n")``, as LongBench takes it)."""
    return int(tokenizer.encode("\n", add_special_tokens=False)[-1])


def choose_document_factor(tokenizer: Any, document: str, settings: PredSettings) -> int | None:
    """The factor to send with a document: forced, from the budget, or None (server decides)."""
    if settings.factor is not None:
        return settings.factor
    if settings.budget is None:
        return None
    from vllm_landmark import LandmarkConfig
    from vllm_landmark.planning import DocumentTooLongError, choose_factor

    n_tokens = len(tokenizer.encode(document, add_special_tokens=False))
    try:
        return choose_factor(n_tokens, settings.budget, LandmarkConfig(factors=settings.factors))
    except DocumentTooLongError as exc:
        raise ItemError(str(exc)) from exc


def build_request(
    dataset: str,
    item: dict[str, Any],
    settings: PredSettings,
    config: BenchmarkConfig,
    tokenizer: Any,
    retriever: SpanRetriever | None = None,
) -> tuple[GenerationRequest, dict[str, Any]]:
    """The request for one item in the run's mode, and facts about it for the output line."""
    template = config.prompt(dataset)
    chat = settings.always_chat_template or uses_chat_template(dataset)
    newline = newline_token_id(tokenizer) if stops_at_newline(dataset) else None
    max_tokens = config.max_tokens(dataset)
    meta: dict[str, Any] = {}
    if settings.mode == "plugin" and item["context"].strip():
        prefix, suffix = split_template(template, item)
        if settings.server_plans:
            # The server's retriever plans for the question; without one it uses the message.
            query = item["input"].strip() or None
            content = document_content(prefix, item["context"], suffix, query=query)
        else:
            factor = choose_document_factor(tokenizer, item["context"], settings)
            meta["factor"] = factor
            content = document_content(prefix, item["context"], suffix, factor=factor)
        request = GenerationRequest(
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": content}],
            chat_template=None if chat else PASSTHROUGH_CHAT_TEMPLATE,
            newline_token_id=newline,
        )
        return request, meta
    if settings.mode == "retrieval-only":
        if retriever is None:
            raise ValueError("retrieval-only mode needs a retriever")
        from eval.longbench.retrieval import retrieved_context

        budget = settings.budget if settings.budget is not None else 2048
        context, info = retrieved_context(
            item["context"], item["input"], retriever, tokenizer, budget
        )
        meta["retrieval"] = info
        item = {**item, "context": context}
    if settings.mode == "truncate":
        if settings.budget is None:
            raise ValueError("truncate mode needs --budget")
        context, before, cut = middle_truncate(item["context"], tokenizer, settings.budget)
        meta.update(context_tokens=before, context_truncated=cut)
        item = {**item, "context": context}
    prompt = format_prompt(template, item)
    prompt, before, truncated = middle_truncate(prompt, tokenizer, settings.max_length)
    meta.update(prompt_tokens_before_truncation=before, truncated=truncated)
    if chat:
        request = GenerationRequest(
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": prompt}],
            newline_token_id=newline,
        )
    else:
        request = GenerationRequest(max_tokens=max_tokens, prompt=prompt, newline_token_id=newline)
    return request, meta


def make_record(
    dataset: str,
    item: dict[str, Any],
    mode: str,
    meta: dict[str, Any],
    result: Generation | None,
    error: str | None = None,
) -> dict[str, Any]:
    """One output line: the published fields first, then ours."""
    record: dict[str, Any] = {
        "pred": result.text if result else "",
        "answers": item["answers"],
        "all_classes": item.get("all_classes"),
        "length": item.get("length"),
        "_id": item_id(item),
        "dataset": dataset,
        "mode": mode,
    }
    record.update({key: item[key] for key in CARRIED_FIELDS if key in item})
    record.update(meta)
    if result is not None:
        record.update(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=round(result.latency_s, 4),
        )
        if result.landmark is not None:
            record["landmark"] = result.landmark
    if error is not None:
        record["error"] = error
    return record


@dataclass
class DatasetOutcome:
    """Counts of one data set's run."""

    dataset: str
    total: int
    skipped: int = 0
    written: int = 0
    failed: int = 0


def _tqdm(total: int, initial: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="item", dynamic_ncols=True)


def predict_dataset(
    dataset: str,
    items: Sequence[dict[str, Any]],
    output: PredictionFile,
    build: Callable[[dict[str, Any]], tuple[GenerationRequest, dict[str, Any]]],
    backend: EndpointBackend | OfflineBackend,
    *,
    mode: str,
    concurrency: int = 1,
    batch_size: int = 8,
    redo_errors: bool = False,
    progress: bool = True,
) -> DatasetOutcome:
    """Predict the items not yet in ``output``; raise RunAborted when the endpoint fails."""
    if redo_errors:
        dropped = output.drop_errors()
        if dropped:
            print(f"{dataset}: retrying {dropped} item(s) recorded with errors", file=sys.stderr)
    done = output.done_ids()
    todo, seen = [], set(done)
    for item in items:
        key = item_id(item)
        if key not in seen:
            seen.add(key)
            todo.append(item)
    outcome = DatasetOutcome(dataset, len(items), skipped=len(items) - len(todo))
    bar = _tqdm(len(items), outcome.skipped, dataset) if progress else None

    def finish(item: dict[str, Any], meta: dict[str, Any], result: Any) -> None:
        if isinstance(result, ItemError):
            warn(f"{dataset} item {item_id(item)}: {result}")
            output.append(make_record(dataset, item, mode, meta, None, str(result)))
            outcome.failed += 1
        else:
            output.append(make_record(dataset, item, mode, meta, result))
        outcome.written += 1
        if bar is not None:
            bar.update(1)

    def prepared(item: dict[str, Any]) -> tuple[GenerationRequest | ItemError, dict[str, Any]]:
        try:
            return build(item)
        except (ItemError, ValueError) as exc:
            return ItemError(str(exc)), {}

    try:
        if isinstance(backend, OfflineBackend):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                built = [prepared(item) for item in chunk]
                runnable = [i for i, (req, _) in enumerate(built) if not isinstance(req, ItemError)]
                answers = backend.generate_batch([built[i][0] for i in runnable])  # type: ignore[misc]
                by_index = dict(zip(runnable, answers, strict=True))
                for i, item in enumerate(chunk):
                    finish(item, built[i][1], by_index.get(i, built[i][0]))
        else:
            _run_threaded(todo, prepared, backend, finish, concurrency, dataset)
    finally:
        if bar is not None:
            bar.close()
    return outcome


def _run_threaded(
    todo: Sequence[dict[str, Any]],
    prepared: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]],
    backend: EndpointBackend,
    finish: Callable[[dict[str, Any], dict[str, Any], Any], None],
    concurrency: int,
    dataset: str,
) -> None:
    """Keep ``concurrency`` requests in flight; on an EndpointError stop and drain."""
    stop = threading.Event()
    failure: list[EndpointError] = []

    def work(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Any]:
        request, meta = prepared(item)
        if isinstance(request, ItemError):
            return item, meta, request
        if stop.is_set():  # the endpoint already failed: leave the item for the rerun
            return item, meta, None
        try:
            return item, meta, backend.generate(request)
        except ItemError as exc:
            return item, meta, exc
        except EndpointError as exc:
            stop.set()
            failure.append(exc)
            return item, meta, None

    pending: set[concurrent.futures.Future] = set()
    queue = iter(todo)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        while True:
            while not stop.is_set() and len(pending) < max(1, concurrency):
                item = next(queue, None)
                if item is None:
                    break
                pending.add(pool.submit(work, item))
            if not pending:
                break
            finished, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                item, meta, result = future.result()
                if result is not None:
                    finish(item, meta, result)
    if failure:
        raise RunAborted(f"{dataset}: {failure[0]}")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.longbench.pred",
        description="LongBench / local-suite predictions (resumable).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, type=Path, help="folder of <dataset>.jsonl")
    data.add_argument(
        "--config-dir", type=Path, help="LongBench config/ (default: next to the data)"
    )
    data.add_argument("--datasets", help="comma-separated names (default: all in the config)")
    data.add_argument("--e", dest="longbench_e", action="store_true", help="LongBench-E")
    data.add_argument("--limit", type=int, help="first N items of each data set only")
    data.add_argument("--out", type=Path, required=True, help="prediction folder")
    prompt = parser.add_argument_group("prompts")
    prompt.add_argument("--mode", choices=MODES, default="full")
    prompt.add_argument("--max-length", type=int, help="prompt tokens (default: from the window)")
    prompt.add_argument("--model-maxlen-key", help="take --max-length from model2maxlen.json")
    prompt.add_argument("--tokenizer", help="local folder or cached name (default: --model)")
    prompt.add_argument("--budget", type=int, help="plugin: soft tokens; retrieval: span tokens")
    prompt.add_argument("--factor", type=int, help="plugin: force this scaling factor")
    prompt.add_argument("--factors", default="1,2,4,8,16,32", help="plugin: allowed factors")
    prompt.add_argument("--retriever", default="lexical", help="retrieval-only: lexical or m3")
    prompt.add_argument(
        "--retriever-model", help="retrieval-only: M3 model folder, or 'default' (bundled)"
    )
    prompt.add_argument(
        "--server-plans",
        action="store_true",
        help="plugin: send the question as the document's query, no factor (the server's "
        "retriever and budget plan the document)",
    )
    prompt.add_argument(
        "--always-chat-template",
        action="store_true",
        help="apply the chat template to every data set (LongBench skips it for 6)",
    )
    backend = parser.add_argument_group("backend")
    backend.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://HOST:8000/v1")
    backend.add_argument("--offline", action="store_true", help="run an in-process vLLM engine")
    backend.add_argument("--model", help="model name at the endpoint / folder for --offline")
    backend.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    backend.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    backend.add_argument("--max-retries", type=int, default=2)
    backend.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    backend.add_argument(
        "--no-vllm-extras",
        dest="vllm_extras",
        action="store_false",
        help="do not send vLLM-only sampling fields (for other APIs)",
    )
    backend.add_argument("--batch-size", type=int, default=8, help="offline: items per batch")
    backend.add_argument("--dtype", default="float32", help="offline: engine dtype")
    backend.add_argument("--max-model-len", type=int, help="offline: engine window")
    backend.add_argument("--landmark", action="store_true", help="offline: load the plugin")
    parser.add_argument("--redo-errors", action="store_true", help="retry items that failed")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if bool(args.base_url) == bool(args.offline):
        parser.error("give exactly one of --base-url and --offline")
    if args.offline and not args.model:
        parser.error("--offline needs --model (a model folder)")
    if args.server_plans and (args.mode != "plugin" or args.factor is not None):
        parser.error("--server-plans is for --mode plugin, without --factor")
    if args.mode == "truncate" and args.budget is None:
        parser.error("--mode truncate needs --budget (context tokens to keep)")
    return args


def endpoint_window(backend: EndpointBackend) -> int | None:
    """The window vLLM reports in /v1/models (``max_model_len``), if any."""
    try:
        for model in backend.client.models.list():
            if model.id == backend.model:
                value = (model.model_extra or {}).get("max_model_len")
                return int(value) if value else None
    except Exception:
        return None
    return None


def folder_window(model: str | None) -> int | None:
    """``max_position_embeddings`` of a local model folder, if there is one."""
    if not model:
        return None
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return int(value) if value else None


def resolve_datasets(args: argparse.Namespace, config: BenchmarkConfig) -> list[str]:
    """Data set names to run (LongBench-E: the 13 with an _e version)."""
    if args.datasets:
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    elif args.longbench_e:
        names = list(LONGBENCH_E_DATASETS)
    elif set(LONGBENCH_V1) <= set(config.prompts):
        names = list(LONGBENCH_V1)
    else:
        names = list(config.prompts)
    unknown = [n for n in names if n not in config.prompts]
    if unknown:
        raise ConfigError(
            f"no prompt for {', '.join(unknown)} in {config.folder}/dataset2prompt.json"
        )
    return names


def write_run_info(out: Path, info: dict[str, Any]) -> None:
    """Append this run's settings to ``OUT/run.json``."""
    path = out / "run.json"
    runs: list[Any] = []
    if path.is_file():
        try:
            runs = json.loads(path.read_text()).get("runs", [])
        except (json.JSONDecodeError, AttributeError):
            warn(f"{path}: unreadable, starting a new run list")
    runs.append(info)
    path.write_text(json.dumps({"runs": runs}, indent=2, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    try:
        config = load_config(find_config_dir(args.config_dir, args.data_dir))
        datasets = resolve_datasets(args, config)
        retriever = (
            make_retriever(args.retriever, args.retriever_model)
            if args.mode == "retrieval-only"
            else None
        )
        if args.offline:
            from vllm_landmark import LandmarkConfig

            engine_args: dict[str, Any] = {"dtype": args.dtype}
            if args.max_model_len:
                engine_args["max_model_len"] = args.max_model_len
            landmark = LandmarkConfig(budget=args.budget) if args.landmark else None
            backend: EndpointBackend | OfflineBackend = OfflineBackend(
                args.model, landmark_config=landmark, **engine_args
            )
            window = args.max_model_len or folder_window(args.model)
        else:
            backend = EndpointBackend(
                args.base_url,
                args.model,
                api_key=args.api_key,
                timeout=args.timeout,
                max_retries=args.max_retries,
                vllm_extras=args.vllm_extras,
            )
            window = endpoint_window(backend) or folder_window(backend.model)
        tokenizer = load_tokenizer(args.tokenizer or backend.model)
        if args.max_length:
            max_length = args.max_length
        elif args.model_maxlen_key:
            max_length = int(config.model_max_length[args.model_maxlen_key])
        elif window:
            max_length = default_max_length(window)
        else:
            raise ConfigError("cannot tell the model window: pass --max-length")
    except (ConfigError, RetrieverUnavailable, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3

    settings = PredSettings(
        mode=args.mode,
        max_length=max_length,
        budget=args.budget,
        factor=args.factor,
        factors=tuple(int(k) for k in args.factors.split(",")),
        always_chat_template=args.always_chat_template,
        server_plans=args.server_plans,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    info: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m eval.longbench.pred "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "backend": "offline" if args.offline else args.base_url,
        "model": backend.model,
        "tokenizer": args.tokenizer or backend.model,
        "window": window,
        "settings": asdict(settings),
        "retriever": args.retriever if args.mode == "retrieval-only" else None,
        "data_dir": str(args.data_dir),
        "config_dir": str(config.folder),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
        "datasets": {},
    }
    exit_code = 0
    for dataset in datasets:
        source = f"{dataset}_e" if args.longbench_e else dataset
        try:
            items = load_items(args.data_dir, source)
        except MissingDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            exit_code = 2
            continue
        if args.limit is not None:
            items = items[: args.limit]
        output = PredictionFile(args.out / f"{dataset}.jsonl")

        def build(item: dict[str, Any], dataset: str = dataset) -> Any:
            return build_request(dataset, item, settings, config, tokenizer, retriever)

        try:
            outcome = predict_dataset(
                dataset,
                items,
                output,
                build,
                backend,
                mode=args.mode,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                redo_errors=args.redo_errors,
                progress=args.progress,
            )
        except RunAborted as exc:
            kept = sum(1 for _ in output.records())
            print(
                f"error: endpoint failure, run stopped: {exc}\n"
                f"{kept} prediction(s) of {dataset} are kept in {output.path}; fix the endpoint "
                "and run the same command again to continue where it stopped.",
                file=sys.stderr,
            )
            info["aborted"] = str(exc)
            write_run_info(args.out, info)
            return 3
        info["datasets"][dataset] = asdict(outcome)
        if outcome.failed:
            exit_code = max(exit_code, 1)
        print(
            f"{dataset}: {outcome.written} predicted, {outcome.skipped} already done, "
            f"{outcome.failed} failed -> {output.path}",
            file=sys.stderr,
        )
    info["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_run_info(args.out, info)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
