"""The serving-format stage: questions over documents planned as the server plans them.

The QA stage compresses a whole window at one factor; the server never sends that. It keeps
windows of whole sentences around the sentences that match the question at k = 1 and
compresses the gaps between them (``vllm_landmark.planning.plan_document``), so the LLM
reads raw text next to soft tokens of several factors. A ``plan_qa`` sample is exactly that:

1. a document window of ``context_tokens`` (re-tokenized from its text, as the server
   tokenizes a document) and a synthetic question about it (``data.question_window``);
2. its sentences (the retriever's segmenter, mapped to LLM tokens as the server maps them:
   ``retrieval.encoding.llm_token_offsets``) ranked by BM25 against the question over the
   document's own sentences (``retrieval.lexical``: the lexical half of the server's fused
   ranking; the M3 half would need the retriever in the training loop);
3. a budget of ``n / r`` soft tokens for a compression ratio ``r`` drawn from
   ``plan_compression``, and the planner's own plan into it at the run's factors
   (``vllm_landmark.planning.plan_document``, the server's call);
4. the chat prompt around the document and the answer as the target, as the QA stage.

Sometimes the answer's sentence is in a raw window, sometimes only in a compressed gap (the
ranking misses it): the embedder learns to serve both, in the mixture the server produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vllm_landmark import planning
from vllm_landmark.document.tokens import encode_document
from vllm_landmark.retrieval.encoding import llm_token_offsets
from vllm_landmark.retrieval.lexical import bm25_span_scores
from vllm_landmark.retrieval.segment import segment

from .data import QATemplate, Sample, TokenShards, question_window

Triple = tuple[int, int, int]


def plan_for_question(
    token_ids: Sequence[int],
    sentences: Sequence[tuple[int, int]],
    question_ids: Sequence[int],
    budget: int,
    factors: Sequence[int],
) -> list[Triple]:
    """The planner's plan of a document for a question: BM25-ranked sentences, windows at
    k = 1 and the gaps at ``factors``, in ``budget`` soft tokens."""
    ids = np.asarray(token_ids, dtype=np.int64)
    units = np.asarray(sentences, dtype=np.int64)
    singles = np.stack([np.arange(len(units)), np.arange(len(units)) + 1], axis=1)
    scores = bm25_span_scores(ids, units, singles, question_ids)
    settings = planning.PlanSettings((1, *factors), (1, *factors))
    plan, _ = planning.plan_document(
        len(ids), budget, settings, planning.ScoredSpans(tuple(sentences), tuple(scores.tolist()))
    )
    return [tuple(t) for t in plan.as_triples()]


def plan_qa_sample(
    shards: TokenShards,
    rng: np.random.Generator,
    template: QATemplate,
    *,
    context_tokens: tuple[int, int],
    factors: tuple[int, ...],
    compression: tuple[float, float],
    attempts: int = 20,
) -> Sample:
    """A synthetic question about a document planned as the server plans it (module doc)."""
    tokenizer = template.tokenizer
    _, text, question, answer = question_window(
        shards, rng, tokenizer, context_tokens=context_tokens, attempts=attempts
    )
    # The document's tokens and sentences exactly as the server's planner gets them.
    ids = encode_document(tokenizer, text)
    ranges, _ = llm_token_offsets(tokenizer, text, segment(text))
    sentences = planning.ScoredSpans.from_ranges(ranges.tolist(), [0.0] * len(ranges)).bounds
    ratio = float(rng.uniform(*compression))
    budget = max(1, int(len(ids) / ratio))
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    plan = plan_for_question(ids, sentences, question_ids, budget, factors)
    prefix, suffix, target = template.encode(question, answer)
    return Sample(
        torch.tensor(ids, dtype=torch.long),
        max(k for _, _, k in plan),
        torch.tensor(target),
        torch.tensor(prefix, dtype=torch.long),
        torch.tensor(suffix, dtype=torch.long),
        kind="plan_qa",
        plan=tuple(plan),
    )


def soft_tokens(
    embedder: Any, llm: torch.nn.Module, samples: Sequence[Sample]
) -> list[torch.Tensor]:
    """Each sample's soft tokens: its context at its factor, or, for a planned sample, its
    plan's spans in order (k = 1: the LLM's own token embeddings; k > 1: the embedder's),
    every compressed span of the batch in one packed embedder forward."""
    spans: list[torch.Tensor] = []
    span_factors: list[int] = []
    for sample in samples:
        for start, end, k in sample.plan or ((0, len(sample.context), sample.factor),):
            if k > 1:
                spans.append(sample.context[start:end])
                span_factors.append(k)
    compressed = iter(embedder(spans, span_factors) if spans else [])
    embed = llm.get_input_embeddings()
    out = []
    for sample in samples:
        pieces = []
        for start, end, k in sample.plan or ((0, len(sample.context), sample.factor),):
            if k > 1:
                pieces.append(next(compressed))
            else:
                with torch.no_grad():
                    raw = embed(sample.context[start:end].to(embed.weight.device))
                pieces.append(raw)
        out.append(torch.cat([p.to(pieces[0].device, pieces[0].dtype) for p in pieces]))
    return out
