"""The answering phase: greedy answers with correctness for every prompt of every item (`predictions.parquet`).

- `plan`: the prompts of each condition (`plan_prompts`, `Query`, `PlannedPrompt`);
- `generate`: batched greedy generation (`greedy_answers`, `stop_token_ids`, `trim_generated`);
- `predictions`: the predictions table (`predictions_table`, `PREDICTIONS_SCHEMA`, `chain_names_bridge`, `follows`);
- `commands`: the `answer` subcommand.

The names below are importable from `knrecall.answer` itself; they load on first use (no torch at import).
"""

from knrecall.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("COT_CONDITIONS", "CONFLICT_HOPS", "PlannedPrompt", "Query", "hop2_of_bridge", "plan_prompts"),
                    "knrecall.answer.plan"),
    **dict.fromkeys(("check_context", "context_limit", "greedy_answers", "stop_token_ids", "trim_generated"),
                    "knrecall.answer.generate"),
    **dict.fromkeys(("PREDICTIONS_SCHEMA", "answerable", "chain_names_bridge", "follows", "predictions_table"),
                    "knrecall.answer.predictions"),
    **dict.fromkeys(("ANSWER_MARKER", "extract_span", "is_correct", "normalize"), "knrecall.data.correctness"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
