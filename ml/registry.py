"""Promotion gate: a challenger replaces the champion only if it wins on a later window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.artifact import TimingModel
from ml.records import FailureRecords
from ml.train import attempt_rows, classification_metrics

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PromotionVerdict:
    """Whether to promote, why, and the metrics both models scored on the window."""

    promote: bool
    reason: str
    challenger: dict[str, Any]
    champion: dict[str, Any] | None


def promotion_gate(
    challenger: TimingModel,
    champion: TimingModel | None,
    records: FailureRecords,
    attempts: F64,
    success_index: I64,
    *,
    min_rows: int = 1000,
    min_log_loss_gain: float = 0.0,
    max_auc_loss: float = 0.005,
) -> PromotionVerdict:
    """Score both models on a retry log that starts after the challenger's training data.

    The challenger wins on lower log loss (by more than `min_log_loss_gain`) without giving up
    more than `max_auc_loss` of AUC. A window that overlaps its training data is refused.
    """
    window_start = float(records.failed_at.min()) if len(records) else float("nan")
    trained_until = challenger.metadata.get("data_window", [None, None])[1]
    if trained_until is None or not window_start > float(trained_until):
        return PromotionVerdict(
            False, "held-out window does not start after the challenger's data", {}, None
        )
    rows = attempt_rows(records, attempts, success_index, challenger.payday_reading)
    if rows.y.size < min_rows:
        return PromotionVerdict(False, f"only {rows.y.size} attempts in the window", {}, None)
    category = records.category[rows.failure_row]
    mc = classification_metrics(rows.y, challenger.predict(rows.x), category)
    mc.pop("by_category")
    if champion is None:
        return PromotionVerdict(True, "no champion yet", mc, None)
    # Each model reads paydays with its own population prior.
    champion_x = attempt_rows(records, attempts, success_index, champion.payday_reading).x
    mh = classification_metrics(rows.y, champion.predict(champion_x), category)
    mh.pop("by_category")
    gain = mh["log_loss"] - mc["log_loss"]
    auc_drop = (mh["auc"] or 0.0) - (mc["auc"] or 0.0)
    if gain > min_log_loss_gain and auc_drop <= max_auc_loss:
        return PromotionVerdict(True, f"log loss better by {gain:.4f}", mc, mh)
    return PromotionVerdict(
        False, f"log loss gain {gain:.4f}, AUC change {-auc_drop:+.4f}: champion stays", mc, mh
    )
