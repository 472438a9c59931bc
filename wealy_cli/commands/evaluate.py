"""``wealy evaluate``: exact MAP / MR1 / ARP of a trained model on a dataset split."""

from __future__ import annotations

from typing import Any

from wealy_cli.commands.params import command
from wealy_cli.core import ui
from wealy_cli.core.settings import CommandSettings, write_resolved
from wealy_cli.retrieval.options import EvaluateRun


class EvaluateSettings(CommandSettings, EvaluateRun):
    section = "evaluate"


def published_model(flags: dict[str, Any]) -> dict[str, Any]:
    """With --model NAME the model decides the dataset and its evaluation settings."""
    from wealy_cli.retrieval.evaluate import published_model_flags

    return published_model_flags(flags.get("model"), flags)


@command(EvaluateSettings, prepare=published_model)
def evaluate(settings: EvaluateSettings) -> None:
    """Evaluate a model all-against-all on a split: MAP, MR1, ARP with 95 % intervals.

    Writes results.json, per_query.csv (key, clique, ap, first_rank, rp) and settings.yaml."""
    from wealy_cli.retrieval.evaluate import PER_QUERY, RESULTS
    from wealy_cli.retrieval.evaluate import evaluate as run_evaluation

    result = run_evaluation(settings)
    if result is None:  # a worker other than rank 0
        return
    out = settings.run_dir()
    write_resolved(settings, out)
    m = result.metrics
    ui.show(ui.metrics_table(f"{settings.dataset}/{settings.split}: {m.n_queries} queries ({m.n_skipped} skipped), "
                             f"topk {settings.topk}", {"model": m.to_dict()}))
    ui.console.print(f"wrote {out / RESULTS} and {out / PER_QUERY} ({result.seconds:.1f} s)", highlight=False)
