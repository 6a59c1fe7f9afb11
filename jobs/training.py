"""Training the retry-timing model from stored history (or the simulator), gate, and registry."""

import asyncio
import functools
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from app.db import Database
from app.enums import ModelStatus
from app.errors import InvalidState, NotFound
from app.models.model_version import HISTORY_SOURCE, simulated_failures, simulated_source
from app.services import model_registry as registry
from app.services.model_registry import GateVerdict, HistoryFailure, TrainedModel
from app.tenancy import SYSTEM_SCOPE
from jobs.context import WorkerContext
from jobs.model import CACHE, ModelCache, history_row, load_current, utc
from ml import timeutil
from ml.artifact import TimingModel, save_model
from ml.features import FEATURE_LIST
from ml.records import FailureRecords
from ml.registry import promotion_gate
from ml.simulator.world import generate_failures
from ml.train import TrainConfig, TrainResult, fit_model, simulate_history, train_model

logger = structlog.get_logger("portal.jobs")

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
T = TypeVar("T")
Progress = Callable[[str], None]

# The latest share of stored failures is held out for the promotion gate.
GATE_SHARE = 0.2
# Failures younger than this may still be retried: their outcome is not known yet.
SETTLE_DAYS = 21
MAX_RETRIES = 8


@dataclass(frozen=True)
class RetryLog:
    """Failures with the retries made on them, in the shape training and the gate read."""

    records: FailureRecords
    attempts: F64
    success_index: I64

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class TrainOutcome:
    """What one training run stored: the model id, its test metrics and the gate's verdict."""

    model_id: str
    metrics: dict[str, Any]
    gate: dict[str, Any]
    failures: int
    gate_failures: int


# Every CPU-heavy training step runs on this one thread, for the life of the process, rather
# than on the loop's default executor:
# - LightGBM's OpenMP runtime (libgomp) builds a team of worker threads for each OS thread that
#   enters a parallel region, and keeps it. On the default executor consecutive steps land on
#   whichever of its threads is free, so teams piled up (six fits in one process went from 3 to
#   10 OS threads); on a busy two-core machine their spin-waiting threads, beside scikit-learn's
#   own libgomp copy and numpy's OpenBLAS pool, compete for the cores the training needs.
# - Two trainings of one process (the weekly job, a regate, a CLI run) never run at once, and a
#   step that outlives its awaiting coroutine (a job timeout cancels the await, not the thread)
#   delays the next one instead of running beside it.
# - The default executor stays free for what needs it to answer quickly: name resolution for
#   new database, Redis and HTTP connections, and asyncio.to_thread.
_TRAINING_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portal-training")


async def _off_loop(fn: Callable[[], T]) -> T:
    """CPU-heavy work on the training thread, so the loop and arq's heartbeat keep running."""
    return await asyncio.get_running_loop().run_in_executor(_TRAINING_THREAD, fn)


def retry_log(failures: Sequence[HistoryFailure]) -> RetryLog:
    """Stored failures as column records, an (n, K) retry-time array and the success index."""
    records = FailureRecords.from_rows([history_row(f) for f in failures])
    k = max([len(f.retries) for f in failures] + [1])
    k = min(k, MAX_RETRIES)
    attempts = np.full((len(failures), k), np.nan)
    success = np.full(len(failures), -1, dtype=np.int64)
    for i, f in enumerate(failures):
        for j, (at, ok) in enumerate(f.retries[:k]):
            attempts[i, j] = at.timestamp()
            if ok:
                success[i] = j
    return RetryLog(records, attempts, success)


def split_for_gate(failures: Sequence[HistoryFailure]) -> tuple[list[HistoryFailure], ...]:
    """Training failures and a strictly later held-out window (the latest GATE_SHARE)."""
    ordered = sorted(failures, key=lambda f: f.first_failed_at)
    cut = int(len(ordered) * (1.0 - GATE_SHARE))
    train, held = ordered[:cut], ordered[cut:]
    if train and held:
        last = train[-1].first_failed_at
        held = [f for f in held if f.first_failed_at > last]
    return train, held


def gate(
    challenger: TimingModel,
    champion: TimingModel | None,
    champion_id: Any,
    log: RetryLog,
    **limits: Any,
) -> GateVerdict:
    """The ml promotion gate on a later window, as the registry records it."""
    if len(log) == 0:
        return GateVerdict(
            False, "no held-out window after the training data", champion_id, None, None
        )
    verdict = promotion_gate(
        challenger, champion, log.records, log.attempts, log.success_index, **limits
    )
    return GateVerdict(
        promote=verdict.promote,
        reason=verdict.reason,
        champion_id=champion_id,
        window_start=utc(float(log.records.failed_at.min())),
        window_end=utc(float(log.records.failed_at.max())),
        challenger_metrics=verdict.challenger,
        champion_metrics=verdict.champion,
    )


async def store_and_gate(
    db: Database,
    result: TrainResult,
    held_out: RetryLog,
    *,
    source: str,
    now: datetime,
    cache: ModelCache = CACHE,
    gate_limits: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Store the model as a challenger and record the gate's verdict against the champion."""
    model = result.model
    window = model.metadata["data_window"]
    artifact = await _off_loop(functools.partial(save_model, model))
    champion = await load_current(db, ModelStatus.CHAMPION, cache)
    verdict = await _off_loop(
        functools.partial(
            gate,
            model,
            None if champion is None else champion.model,
            None if champion is None else champion.id,
            held_out,
            **(gate_limits or {}),
        )
    )
    if champion is not None and champion.model is None:
        verdict = GateVerdict(
            verdict.promote,
            f"{verdict.reason} (champion unusable: {champion.error})",
            verdict.champion_id,
            verdict.window_start,
            verdict.window_end,
            verdict.challenger_metrics,
            None,
        )
    async with db.uow(SYSTEM_SCOPE) as uow:
        row = registry.store_challenger(
            uow,
            TrainedModel(
                artifact=artifact,
                trained_at=now,
                data_start=utc(float(window[0])),
                data_end=utc(float(window[1])),
                feature_list=FEATURE_LIST.tag,
                source=source,
                parameters=dict(model.metadata.get("params", {})),
                metrics=result.metrics,
            ),
        )
        await uow.session.flush()
        await registry.record_gate(uow, row.id, verdict)
        await uow.commit()
    return TrainOutcome(
        model_id=str(row.id),
        metrics=result.metrics,
        gate=verdict.to_json(),
        failures=int(result.metrics.get("rows", {}).get("train", 0)),
        gate_failures=len(held_out),
    )


async def train_from_history(
    db: Database,
    *,
    now: datetime,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    settle_days: int = SETTLE_DAYS,
    cache: ModelCache = CACHE,
) -> TrainOutcome:
    """Fit on stored attempt history (every merchant), gate on its latest window, store.

    Raises ValueError when there is too little history to split and measure.
    """
    say = progress or (lambda _m: None)
    say("reading stored attempt history")
    async with db.session(SYSTEM_SCOPE) as session:
        failures = await registry.failure_history(
            session, since=None, until=now - timedelta(days=settle_days)
        )
    train, held = split_for_gate(failures)
    if not train or not held:
        raise ValueError(f"only {len(failures)} settled failures stored: too few to train")
    train_log = await _off_loop(functools.partial(retry_log, train))
    held_log = await _off_loop(functools.partial(retry_log, held))
    result = await _off_loop(
        functools.partial(
            fit_model,
            train_log.records,
            train_log.attempts,
            train_log.success_index,
            config,
            progress,
        )
    )
    say("running the promotion gate")
    return await store_and_gate(db, result, held_log, source=HISTORY_SOURCE, now=now, cache=cache)


def simulated(
    n: int, config: TrainConfig, progress: Progress | None = None
) -> tuple[TrainResult, RetryLog]:
    """Train on n simulated failures; the gate window is a later simulated stretch."""
    say = progress or (lambda _m: None)
    say("simulating failures")
    batch = generate_failures(n, seed=config.seed)
    result = train_model(batch, config, progress)
    end = float(result.model.metadata["data_window"][1])
    say("simulating the held-out window")
    return result, simulated_window(n, config, end)


def simulated_window(n: int, config: TrainConfig, end: float) -> RetryLog:
    """The simulated retry log that follows a simulated training set ending at `end`."""
    later = generate_failures(max(n // 3, 500), seed=config.seed + 1, start=end + timeutil.DAY)
    # The simulator dates some failures before `start`; the gate takes only the later ones.
    later = later.take(np.flatnonzero(later.observed.failed_at > end))
    run = simulate_history(later, config, seed=config.seed + 1)
    return RetryLog(later.observed, run.attempts, run.success_index)


async def train_simulated(
    db: Database,
    n: int,
    *,
    now: datetime,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    cache: ModelCache = CACHE,
) -> TrainOutcome:
    """Fit on the simulator's history (exploration included), gate on a later window, store."""
    config = config or TrainConfig()
    result, held = await _off_loop(functools.partial(simulated, n, config, progress))
    if progress:
        progress("running the promotion gate")
    return await store_and_gate(db, result, held, source=simulated_source(n), now=now, cache=cache)


async def regate_model(
    db: Database,
    model_id: uuid.UUID,
    *,
    now: datetime,
    settle_days: int = SETTLE_DAYS,
    cache: ModelCache = CACHE,
) -> GateVerdict:
    """Run the gate again for a stored model against the champion of now, and record it.

    A promotion makes every earlier verdict stale; this is how a waiting challenger gets a new
    one without retraining. The window is the stored history after the model's data (or, for
    a simulated model, the same later simulated stretch it was first gated on).
    """
    async with db.session(SYSTEM_SCOPE) as session:
        row = await registry.model_by_id(session, model_id)
        if row is None:
            raise NotFound("no such model", field="id")
        champion_id = await registry.current_id(session, ModelStatus.CHAMPION)
        simulated = simulated_failures(row.source)
        held: list[HistoryFailure] = []
        if simulated is None:
            held = await registry.failure_history(
                session,
                since=row.data_end + timedelta(microseconds=1),
                until=now - timedelta(days=settle_days),
            )
    if champion_id == row.id:
        raise InvalidState("the model is the champion already", field="id")
    challenger = cache.get(row.id) or cache.load(row.id, row.artifact)
    if challenger.model is None:
        verdict = GateVerdict(False, challenger.error or "unusable", champion_id, None, None)
    else:
        if simulated is not None:
            config = TrainConfig(seed=int(row.parameters.get("seed", 0)))
            end = row.data_end.timestamp()
            log = await _off_loop(functools.partial(simulated_window, simulated, config, end))
        else:
            log = await _off_loop(functools.partial(retry_log, held))
        champion = await load_current(db, ModelStatus.CHAMPION, cache)
        verdict = await _off_loop(
            functools.partial(
                gate,
                challenger.model,
                None if champion is None else champion.model,
                None if champion is None else champion.id,
                log,
            )
        )
    async with db.uow(SYSTEM_SCOPE) as uow:
        await registry.record_gate(uow, model_id, verdict)
        await uow.commit()
    return verdict


async def retrain_model(ctx: WorkerContext) -> dict[str, Any]:
    """Weekly: train a challenger on stored history; support promotes it if the gate agrees."""
    try:
        outcome = await train_from_history(ctx["db"], now=ctx["clock"].now())
    except ValueError as exc:
        logger.info("retraining skipped", reason=str(exc))
        return {"status": "skipped", "reason": str(exc)}
    logger.info(
        "challenger trained",
        model_id=outcome.model_id,
        auc=outcome.metrics.get("auc"),
        gate=outcome.gate.get("reason"),
    )
    return {"status": "trained", "model_id": outcome.model_id, "gate": outcome.gate}
