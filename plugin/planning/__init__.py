"""Planning: which tokens of each document the LLM reads, and at which factor.

One package, one rule. `plan_prompt` (in `document`) is the pure function every caller plans
through: the server and the offline engine (via `document.reader.DocumentReader`), the proxy,
the evaluation's plan arm and the embedder recipe's plan stage.

- `plan`: the `Plan` type (`(start, end, k)` spans) and plans that need no scores;
- `scores`: span scores as the planner reads them (from the retriever, or by position);
- `windows`: raw windows of whole sentences around the best spans, then the gaps;
- `ladder`: a factor per scored span under a soft-token budget;
- `document`: the budget rule over a prompt's documents (`plan_prompt`, `plan_document`).
"""

from .document import (
    DocumentToPlan,
    NoRoomError,
    PlannedDocument,
    PlanSettings,
    needs_scores,
    plan_document,
    plan_prompt,
    share_room,
)
from .ladder import plan_spans
from .plan import (
    DocumentTooLongError,
    Plan,
    PlanError,
    PlannedSpan,
    choose_factor,
    head_and_tail,
    num_soft_tokens,
    uniform_plan,
)
from .scores import ScoredSpans, position_scores
from .windows import landmark_windows_plan, paragraph_token_bounds, select_windows, windows_plan

__all__ = [
    "DocumentToPlan",
    "DocumentTooLongError",
    "NoRoomError",
    "Plan",
    "PlanError",
    "PlanSettings",
    "PlannedDocument",
    "PlannedSpan",
    "ScoredSpans",
    "choose_factor",
    "head_and_tail",
    "landmark_windows_plan",
    "needs_scores",
    "num_soft_tokens",
    "paragraph_token_bounds",
    "plan_document",
    "plan_prompt",
    "plan_spans",
    "position_scores",
    "select_windows",
    "share_room",
    "uniform_plan",
    "windows_plan",
]
