"""Evaluation: the feature network (the evaluator), the metrics, the suite that scores
generated images against a data set, and the reports."""

from gankit.evaluation.inception import inception_fid
from gankit.evaluation.report import (
    COMPARE_COLUMNS,
    compare_rows,
    format_report,
    format_value,
    load_samples,
    rows_to_csv,
    rows_to_markdown,
    write_report,
)
from gankit.evaluation.suite import (
    METRICS,
    Evaluation,
    evaluate_images,
    evaluate_run,
    open_evaluation,
    open_run_evaluation,
)

__all__ = [
    "COMPARE_COLUMNS",
    "METRICS",
    "Evaluation",
    "compare_rows",
    "evaluate_images",
    "evaluate_run",
    "format_report",
    "format_value",
    "inception_fid",
    "load_samples",
    "open_evaluation",
    "open_run_evaluation",
    "rows_to_csv",
    "rows_to_markdown",
    "write_report",
]
