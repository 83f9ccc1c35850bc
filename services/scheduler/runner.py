"""``JobRunner``: drives one job through its rounds (a thread per job).

Round protocol: place the round's tasks on live nodes with the job's policy, hand them out
through the ``Dispatcher``, collect reports, move the tasks of lost or failing nodes elsewhere,
then ask the aggregator to close the round. Node changes arrive from the etcd watch
(``on_nodes_changed``) and reports from RPC threads (``report``); both only update state and
wake the runner, which does all the deciding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from services.scheduler.dispatch import Dispatcher
from services.scheduler.events import EventLog
from services.scheduler.jobs import quorum_count
from services.scheduler.planner import (
    NodeCapacity,
    PlacementCache,
    ResourceNeeds,
    ThroughputTracker,
)
from services.scheduler.rounds import RoundState, TaskState
from services.scheduler.store import JobStore
from tessera.common.errors import Conflict, NotFound, NotLeader, TesseraError
from tessera.v1 import aggregator_pb2, common_pb2, scheduler_pb2

__all__ = ["AggregatorPort", "JobRunner", "TicketMinter"]

# Mints the ticket that lets a node push one task's contribution: (job, round, task, node).
TicketMinter = Callable[[str, int, int, str], str]

log = logging.getLogger(__name__)

Kind = scheduler_pb2.JobEventKind
# After this many placements of the same task in one round the job fails: something is wrong
# with the task itself, not with the nodes.
MAX_ATTEMPTS = 8
# Models up to this size ride along with their tasks: CloseRound sends the new one back once
# per round instead of every task fetching it, a call that costs more in overhead than bytes.
INLINE_MODEL_BYTES = 256 * 1024


class AggregatorPort(Protocol):
    """What the runner needs from the aggregator (a gRPC client in production)."""

    address: str

    def open_job(self, job_id: str, spec: common_pb2.JobSpec) -> tuple[int, int]:
        """Create the job's model; return its (version, round to run)."""
        ...

    def close_round(
        self, job_id: str, round_index: int, num_tasks: int, model_max_bytes: int = 0
    ) -> aggregator_pb2.CloseRoundResponse:
        """Aggregate and step; return the metrics, and the new model if it fits."""
        ...

    def close_job(self, job_id: str) -> None:
        """The job is over: free its memory (its checkpoint stays for downloads)."""
        ...


class JobRunner:
    """Runs one job to completion, cancellation or failure."""

    def __init__(
        self,
        job: common_pb2.Job,
        *,
        store: JobStore,
        aggregator: AggregatorPort,
        dispatcher: Dispatcher,
        live_nodes: Callable[[], dict[str, common_pb2.Node]],
        events: EventLog,
        tickets: TicketMinter | None = None,
    ) -> None:
        self.job = job
        self._store = store
        self._aggregator = aggregator
        self._dispatcher = dispatcher
        self._live_nodes = live_nodes
        self.events = events
        self._tickets = tickets
        self._cond = threading.Condition()
        self._round: RoundState | None = None
        self._assigned_at: dict[int, float] = {}
        self._lost: set[str] = set()
        self._nodes_changed = False
        self._cancelled = False
        self._abandoned = False
        self._failures: dict[str, int] = {}
        self._throughput = ThroughputTracker()
        self._plans = PlacementCache()
        self._last_unplaced: tuple[str, ...] = ()
        self._recoveries: dict[int, int] = {}
        # The last close, when it brought a small model back to send along with tasks.
        self._inline: aggregator_pb2.CloseRoundResponse | None = None
        # Async tasks fetch the latest model themselves: nothing to send along.
        self._inline_fits = self.job.spec.mode != "async"
        self._thread = threading.Thread(target=self._run, name=f"job-{job.job_id}", daemon=True)

    # -- called from other threads -------------------------------------------------------------

    def start(self) -> None:
        """Start the job's thread."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the job's thread to end."""
        self._thread.join(timeout)

    def cancel(self) -> None:
        """Ask the job to stop after the current step."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def abandon(self) -> None:
        """Stop without recording anything: another scheduler carries the job on."""
        with self._cond:
            self._abandoned = True
            self._cancelled = True
            self._cond.notify_all()
        self.events.publish(
            scheduler_pb2.JobEvent(
                kind=Kind.JOB_EVENT_KIND_WAITING,
                job=self.job,
                message="this scheduler stepped down; reconnect to the new leader",
            ),
            final=True,
        )

    def on_nodes_changed(self, lost: set[str]) -> None:
        """The live-node view changed; ``lost`` nodes vanished."""
        with self._cond:
            self._lost |= lost
            self._nodes_changed = True
            self._cond.notify_all()

    def report(self, request: scheduler_pb2.ReportTaskRequest) -> bool:
        """Record a worker's report; False when stale (the task moved or the round closed)."""
        with self._cond:
            state = self._round
            if state is None or request.round != state.round:
                return False
            key = (request.job_id, request.round, request.task_index)
            if request.outcome == scheduler_pb2.TASK_OUTCOME_SUCCEEDED:
                accepted = state.complete(request.task_index, request.node_id)
                if accepted:
                    self._throughput.observe(
                        request.node_id, request.samples, request.compute_seconds
                    )
            else:
                holder = (
                    state.tasks[request.task_index].node_id
                    if 0 <= request.task_index < len(state.tasks)
                    else ""
                )
                accepted = holder == request.node_id and holder != ""
                if accepted:
                    log.warning(
                        "job %s task %s failed on %s: %s",
                        request.job_id,
                        request.task_index,
                        request.node_id,
                        request.message,
                    )
                    self._failures[request.node_id] = self._failures.get(request.node_id, 0) + 1
                    state.release(request.task_index)
            if accepted:
                self._dispatcher.acknowledge(request.node_id, key)
                self._cond.notify_all()
            return accepted

    def task_counts(self) -> dict[str, int]:
        """Tasks of the round in progress by state (empty between rounds)."""
        with self._cond:
            state = self._round
            if state is None:
                return {}
            counts: dict[str, int] = {}
            for task in state.tasks:
                counts[task.state.value] = counts.get(task.state.value, 0) + 1
            return counts

    # -- the job's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_rounds()
        except NotLeader as exc:
            log.warning("job %s left to the new leader: %s", self.job.job_id, exc)
        except TesseraError as exc:
            if self._abandoned:
                return
            self._finish(common_pb2.JOB_STATE_FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a job fails, the scheduler stays up
            log.exception("job %s crashed", self.job.job_id)
            self._finish(common_pb2.JOB_STATE_FAILED, f"internal error: {type(exc).__name__}")

    def _run_rounds(self) -> None:
        spec = self.job.spec
        if not self._wait_for_nodes(spec.min_nodes):
            self._finish(common_pb2.JOB_STATE_CANCELLED, "cancelled")
            return
        self.job.state = common_pb2.JOB_STATE_RUNNING
        self.job.message = ""
        self._store.save_job(self.job)
        round_index = self.job.rounds_completed
        while round_index < spec.rounds:
            state = self._run_round(round_index)
            if state is None:
                self._finish(common_pb2.JOB_STATE_CANCELLED, "cancelled")
                return
            wants_model = self._inline_fits and round_index + 1 < spec.rounds
            try:
                closed = self._aggregator.close_round(
                    self.job.job_id,
                    round_index,
                    state.done_count(),
                    INLINE_MODEL_BYTES if wants_model else 0,
                )
            except (Conflict, NotFound) as exc:
                round_index = self._recover_round(round_index, exc)
                continue
            metrics = closed.metrics
            if wants_model:
                self._keep_inline(closed)
            self.job.rounds_completed = round_index + 1
            self.job.model_version = metrics.model_version
            self.job.last_metrics.CopyFrom(metrics)
            # Recorded before the next round starts: a watcher's snapshot (the job as it is
            # now) must never count a round whose event it has yet to receive.
            self._store.save_round(self.job, metrics, state.records())
            self._publish(Kind.JOB_EVENT_KIND_ROUND_COMPLETED, round=round_index, metrics=metrics)
            round_index += 1
            if spec.target_accuracy and metrics.test_accuracy >= spec.target_accuracy:
                self._finish(
                    common_pb2.JOB_STATE_SUCCEEDED,
                    f"reached target accuracy {spec.target_accuracy} in {round_index} rounds",
                )
                return
            if spec.target_loss and metrics.test_loss <= spec.target_loss:
                self._finish(
                    common_pb2.JOB_STATE_SUCCEEDED,
                    f"reached target loss {spec.target_loss} in {round_index} rounds",
                )
                return
        self._finish(common_pb2.JOB_STATE_SUCCEEDED, f"completed {round_index} rounds")

    def _keep_inline(self, closed: aggregator_pb2.CloseRoundResponse) -> None:
        """Keep the new model to send along with the next round's tasks, if it came back.

        It does not when it is over INLINE_MODEL_BYTES; a job's model keeps its size, so it
        is not asked for again. (Async tasks fetch the latest version themselves.)
        """
        self._inline_fits = bool(closed.model_tensors)
        self._inline = closed if self._inline_fits else None

    def _recover_round(self, round_index: int, error: TesseraError) -> int:
        """Carry on after the aggregator lost a round's contributions (it restarted).

        The job continues from the version the aggregator holds now, running the lost round
        again. Returns the round to run next.

        Raises:
            TesseraError: the same round was lost too often to keep trying.
        """
        self._recoveries[round_index] = self._recoveries.get(round_index, 0) + 1
        if self._recoveries[round_index] > MAX_ATTEMPTS:
            raise TesseraError(f"round {round_index} could not be closed: {error}")
        version, next_round = self._aggregator.open_job(self.job.job_id, self.job.spec)
        message = (
            f"round {round_index} runs again as round {next_round} from model version "
            f"{version}: the aggregator lost its contributions ({error})"
        )
        log.warning("job %s %s", self.job.job_id, message)
        self.job.model_version = version
        self.job.rounds_completed = next_round
        self._store.save_job(self.job)
        self._publish(Kind.JOB_EVENT_KIND_TASK_REASSIGNED, round=round_index, message=message)
        return next_round

    def _wait_for_nodes(self, count: int) -> bool:
        announced = False
        with self._cond:
            while not self._cancelled:
                live = len(self._live_nodes())
                if live >= count:
                    return True
                if not announced:
                    self.job.message = f"waiting for {count} live nodes ({live} now)"
                    self._store.save_job(self.job)
                    self._publish(Kind.JOB_EVENT_KIND_WAITING, message=self.job.message)
                    announced = True
                self._cond.wait_for(lambda: self._nodes_changed or self._cancelled)
                self._nodes_changed = False
        return False

    def _run_round(self, round_index: int) -> RoundState | None:
        """Run one round until it may close; return its final state (None: cancelled).

        A round closes when every task has reported or was dropped, or at its deadline once a
        quorum has reported; the unfinished tasks are then dropped, and WatchJob says which.
        """
        spec = self.job.spec
        started = time.monotonic()
        deadline = started + spec.round_deadline_seconds if spec.round_deadline_seconds else None
        quorum = quorum_count(spec)
        with self._cond:
            state = RoundState(round_index, spec.tasks_per_round)
            self._round = state
            self._lost.clear()
            self._place_pending(state)
        self._publish(Kind.JOB_EVENT_KIND_ROUND_STARTED, round=round_index)
        timeout = spec.task_timeout_seconds
        with self._cond:
            while not state.done:
                if self._cancelled:
                    self._retract_all(state)
                    return None
                self._handle_changes(state, timeout)
                if state.done:
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline and state.done_count() >= quorum:
                    self._drop_unfinished(state, "its deadline passed with a quorum in")
                    break
                wait = self._next_deadline(state, timeout)
                if deadline is not None:
                    wait = min(wait, max(0.01, deadline - now))
                self._cond.wait(timeout=wait)
            self._round = None
            return state

    def _drop_unfinished(self, state: RoundState, why: str) -> None:
        self._retract_all(state)
        dropped = state.drop_unfinished()
        if dropped:
            message = (
                f"round {state.round} closed without tasks {dropped}: {why} "
                f"({state.done_count()} of {len(state.tasks)} reported)"
            )
            log.info("job %s %s", self.job.job_id, message)
            self._publish(Kind.JOB_EVENT_KIND_TASKS_DROPPED, round=state.round, message=message)

    def _may_drop(self, state: RoundState, count: int) -> bool:
        """Under the drop policy, whether ``count`` more tasks can go and a quorum remain."""
        if self.job.spec.straggler_policy != "drop":
            return False
        alive = sum(1 for t in state.tasks if t.state is not TaskState.DROPPED)
        return alive - count >= quorum_count(self.job.spec)

    def _handle_changes(self, state: RoundState, timeout: float) -> None:
        lost, self._lost = self._lost, set()
        self._nodes_changed = False
        for node_id in lost:
            self._dispatcher.forget(node_id)
            self._failures[node_id] = self._failures.get(node_id, 0) + 1
        moved = state.release_nodes(lost)
        now = time.monotonic()
        overdue = [
            t for t in state.outstanding() if now - self._assigned_at.get(t.index, now) > timeout
        ]
        for task in overdue:
            self._dispatcher.retract(task.node_id, (self.job.job_id, state.round, task.index))
            state.release(task.index)
            moved.append(task.index)
        if moved:
            dropping = self._may_drop(state, len(moved))
            for index in moved if dropping else ():
                state.drop(index)
            message = (
                f"round {state.round}: tasks {sorted(moved)} "
                f"{'dropped' if dropping else 'reassigned'} "
                f"(lost nodes: {sorted(lost) or 'none'}, overdue: {[t.index for t in overdue]})"
            )
            log.info("job %s %s", self.job.job_id, message)
            kind = (
                Kind.JOB_EVENT_KIND_TASKS_DROPPED
                if dropping
                else Kind.JOB_EVENT_KIND_TASK_REASSIGNED
            )
            self._publish(kind, round=state.round, message=message)
            if dropping:
                return
        if state.pending():
            self._place_pending(state)

    def _next_deadline(self, state: RoundState, timeout: float) -> float:
        if not state.outstanding():
            return timeout
        now = time.monotonic()
        oldest = min(self._assigned_at.get(t.index, now) for t in state.outstanding())
        return max(0.05, oldest + timeout - now)

    def _place_pending(self, state: RoundState) -> None:
        """Place the round's pending tasks on live nodes (caller holds the lock)."""
        pending = state.pending()
        for index in pending:
            if state.tasks[index].attempts >= MAX_ATTEMPTS:
                raise TesseraError(
                    f"task {index} of round {state.round} failed {MAX_ATTEMPTS} times; giving up"
                )
        nodes = [
            NodeCapacity(
                n.node_id,
                self._throughput.estimate(n.node_id, n.profile.throughput),
                n.profile.bandwidth,
                self._failures.get(n.node_id, 0),
                n.profile.memory_bytes,
                n.profile.gpu_count,
                n.profile.gpu_memory_bytes,
                frozenset(n.profile.local_datasets),
            )
            for n in self._live_nodes().values()
            if n.node_id not in self._lost
        ]
        spec = self.job.spec
        # A task of local steps processes inner_steps batches.
        steps = spec.inner_steps if spec.mode in ("diloco", "async") else 1
        samples = [(spec.batch_size or 1) * max(1, steps) for _ in pending]
        needs = ResourceNeeds(
            spec.min_memory_bytes,
            spec.min_gpus,
            spec.min_gpu_memory_bytes,
            spec.dataset if spec.data_split == "local" else "",
        )
        placement = self._plans.place(
            spec.policy, pending, samples, 0, nodes, needs=needs, seed=spec.seed + state.round
        )
        state.assign(placement.nodes_of_tasks)
        if placement.unplaced_reasons and placement.unplaced_reasons != self._last_unplaced:
            unplaced = sorted(set(pending) - set(placement.nodes_of_tasks))
            message = f"round {state.round}: tasks {unplaced} wait for a node: " + "; ".join(
                placement.unplaced_reasons
            )
            self.job.message = message
            self._publish(Kind.JOB_EVENT_KIND_WAITING, round=state.round, message=message)
        self._last_unplaced = placement.unplaced_reasons
        now = time.monotonic()
        for index, node_id in placement.nodes_of_tasks.items():
            self._assigned_at[index] = now
            self._dispatcher.send(node_id, self._task(state.round, index, node_id))

    def _task(self, round_index: int, index: int, node_id: str) -> scheduler_pb2.Task:
        ticket = (
            self._tickets(self.job.job_id, round_index, index, node_id) if self._tickets else ""
        )
        task = scheduler_pb2.Task(
            ticket=ticket,
            job_id=self.job.job_id,
            round=round_index,
            task_index=index,
            num_tasks=self.job.spec.tasks_per_round,
            model_version=self.job.model_version,
            spec=self.job.spec,
            aggregator_address=self._aggregator.address,
        )
        inline = self._inline
        if inline is not None and inline.metrics.model_version == self.job.model_version:
            task.model_tensors.extend(inline.model_tensors)
            task.model_payload = inline.model_payload
        return task

    def _retract_all(self, state: RoundState) -> None:
        for task in state.outstanding():
            self._dispatcher.retract(task.node_id, (self.job.job_id, state.round, task.index))

    def _finish(self, final_state: common_pb2.JobState.ValueType, message: str) -> None:
        if self._abandoned:
            return
        try:
            self._aggregator.close_job(self.job.job_id)
        except TesseraError as exc:
            # The job merely stays in the aggregator's memory.
            log.warning("job %s: the aggregator did not close it: %s", self.job.job_id, exc)
        self.job.state = final_state
        self.job.message = message
        self.job.finished_at = time.time()
        self._store.save_job(self.job)
        self._publish(Kind.JOB_EVENT_KIND_FINISHED, message=message, final=True)

    def _publish(
        self,
        kind: scheduler_pb2.JobEventKind.ValueType,
        *,
        round: int = 0,  # noqa: A002 - the proto's field name
        metrics: common_pb2.RoundMetrics | None = None,
        message: str = "",
        final: bool = False,
    ) -> None:
        event = scheduler_pb2.JobEvent(
            kind=kind,
            job=self.job,
            round=round,
            message=message,
            live_nodes=len(self._live_nodes()),
            time=time.time(),
        )
        if metrics is not None:
            event.metrics.CopyFrom(metrics)
        self.events.publish(event, final=final)
