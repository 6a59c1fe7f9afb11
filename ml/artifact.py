"""A trained timing model and its artifact bytes: booster, calibrator, feature list, metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from ml import paydays
from ml.features import FEATURE_LIST, FeatureList

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
ARTIFACT_FORMAT = "recovery-timing-model/1"


class ArtifactError(ValueError):
    """The bytes are not a model artifact this code can read."""


class FeatureListMismatchError(ArtifactError):
    """The model was trained on a different feature list than this code builds."""


@dataclass
class TimingModel:
    """Calibrated attempt-success model over FEATURE_LIST."""

    booster: lgb.Booster
    calibrator_x: F64
    calibrator_y: F64
    feature_list: FeatureList = FEATURE_LIST
    metadata: dict[str, Any] = field(default_factory=dict)
    num_threads: int = 1

    @property
    def payday_reading(self) -> paydays.Reading:
        """How the model reads paydays, as at its training: the population prior fitted then
        and failed retries' weight; a model trained before they were stored, the defaults
        and the weight of its time."""
        values = self.metadata.get("payday_prior")
        prior = paydays.default_prior() if values is None else np.asarray(values, np.float64)
        if prior.shape != (paydays.N_HYPOTHESES,) or not np.all(prior > 0.0):
            raise ArtifactError(
                f"payday_prior must be {paydays.N_HYPOTHESES} positive numbers, got {prior.shape}"
            )
        success = float(self.metadata.get("payday_retry_success", paydays.LEGACY_RETRY_SUCCESS))
        if not 0.0 <= success < 1.0:
            raise ArtifactError(f"payday_retry_success must be in [0, 1), got {success}")
        return paydays.Reading(prior, success)

    def predict_raw(self, x: F32) -> F64:
        """Uncalibrated probabilities."""
        out: F64 = np.asarray(
            self.booster.predict(x, num_threads=self.num_threads), dtype=np.float64
        )
        return out

    def calibrate(self, raw: F64) -> F64:
        """Apply the isotonic map learned on a later slice."""
        out: F64 = np.interp(raw, self.calibrator_x, self.calibrator_y)
        return out

    def predict(self, x: F32) -> F64:
        """Calibrated success probabilities."""
        return self.calibrate(self.predict_raw(x))

    def contributions(self, x: F32) -> F64:
        """Per-feature log-odds contributions, last column the bias."""
        out: F64 = np.asarray(
            self.booster.predict(x, pred_contrib=True, num_threads=self.num_threads),
            dtype=np.float64,
        )
        return out


def save_model(model: TimingModel) -> bytes:
    """Serialize a model to self-describing bytes (JSON header with the booster text)."""
    doc = {
        "format": ARTIFACT_FORMAT,
        "feature_list": {
            "name": model.feature_list.name,
            "version": model.feature_list.version,
            "features": list(model.feature_list.features),
            "categorical": list(model.feature_list.categorical),
        },
        "calibrator": {
            "x": model.calibrator_x.tolist(),
            "y": model.calibrator_y.tolist(),
        },
        "metadata": model.metadata,
        "booster": model.booster.model_to_string(),
    }
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def load_model(data: bytes, expected: FeatureList = FEATURE_LIST) -> TimingModel:
    """Read artifact bytes; refuse a model whose feature list differs from the one served."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"not a model artifact: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError("not a model artifact: unknown format")
    fl = doc["feature_list"]
    stored = FeatureList(
        name=str(fl["name"]),
        version=int(fl["version"]),
        features=tuple(fl["features"]),
        categorical=tuple(fl["categorical"]),
    )
    if stored != expected:
        raise FeatureListMismatchError(
            f"model feature list {stored.tag} ({len(stored.features)} features) does not match "
            f"the served {expected.tag} ({len(expected.features)} features)"
        )
    booster = lgb.Booster(model_str=doc["booster"])
    if booster.num_feature() != len(expected.features):
        raise FeatureListMismatchError(
            f"booster has {booster.num_feature()} features, expected {len(expected.features)}"
        )
    return TimingModel(
        booster=booster,
        calibrator_x=np.asarray(doc["calibrator"]["x"], dtype=np.float64),
        calibrator_y=np.asarray(doc["calibrator"]["y"], dtype=np.float64),
        feature_list=stored,
        metadata=dict(doc.get("metadata", {})),
    )
