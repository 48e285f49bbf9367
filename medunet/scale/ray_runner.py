"""``medunet predict --ray``: segment an archive on a pool of Ray actors (a cluster or a local runtime).

Each actor (:class:`CaseWorker`) loads the model once and then runs the very per-case function of the
local path (:func:`medunet.cli.predict.predict_one`: read, ``Predictor.predict``, ``write_case`` with
its atomic rename), so a case folder written on a Ray worker is the same bytes as one written locally.
The driver only sends case paths and receives small result records; images never travel through Ray.

Faults: a case that raises is a failure of that case alone (``failures.csv``). A worker process that
dies (OOM killer, ``kill -9``, a lost node) is restarted by Ray (``max_restarts``) and reloads the
model; the case it was on is retried up to ``--max-retries`` times, then reported as failed, never
retried forever. A killed driver loses only the cases in flight: its actors die with it, their hidden
partial folders are removed at the next start, and ``--resume`` (the default with ``--ray``) skips every
complete case folder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medunet.errors import ConfigError, MedunetError
from medunet.progress import progress_bar, setup_logging
from medunet.scale.runlog import remove_stale_partials, split_complete, write_failures, write_run

if TYPE_CHECKING:
    from medunet.cli.predict import CaseInput

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 2
#: How long the driver waits for a worker to (re)start and load the model (nodes may be autoscaled).
START_TIMEOUT_S = 600.0
#: Seconds between progress lines in the log (the bar is hidden when stderr is not a terminal).
LOG_EVERY_S = 30.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The archive / Ray options of ``medunet predict``."""
    g = p.add_argument_group(
        "archive runs",
        "Segment many cases on a Ray cluster or a local Ray runtime (needs `pip install medunet[scale]`); "
        "writes failures.csv and run.json next to the case folders.",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="auto|ADDRESS",
        help="distribute cases over Ray actors that each load the model once: no value starts (and "
        "stops) a local Ray runtime; 'auto' joins the cluster this machine belongs to (`ray start`); "
        "HOST:PORT or ray://HOST:10001 joins that cluster",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray actors (default: as many as the cluster's CPUs, or GPUs with --gpus-per-worker, allow)",
    )
    g.add_argument(
        "--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs per actor (default: 1)"
    )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="F",
        help="GPUs per actor; a fraction shares a GPU (e.g. 0.5: two actors per GPU) (default: 0)",
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        metavar="N",
        help="times a case is retried after its worker process died (default: %(default)s)",
    )
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip cases whose folder is complete for this model and options (case.json); "
        "default: on with --ray, off otherwise (a local re-run replaces case folders)",
    )


# ----------------------------------------------------------------------------------------------- Ray set-up


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ConfigError(None, "--ray needs the 'ray' package: pip install 'medunet[scale]'") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[str]:
    """Be connected to Ray for the ``with`` block; yields a description of the session.

    A session this process already opened (``ray.init`` in a notebook or a test) is used and left open.
    ``None`` or ``"local"`` start a local runtime (stopped at the end), ``"auto"`` joins the cluster
    this node belongs to, anything else is a cluster address (``HOST:PORT``, ``ray://HOST:10001``).
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield "the Ray session already open in this process"
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting home from hospital networks
    local = address in (None, "", "local")
    try:
        if local:
            ray.init(address="local", include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        hint = ""
        if "auth" in str(exc).lower() or "auth" in str(exc.__cause__).lower():
            hint = (
                " (a cluster with token authentication: set RAY_AUTH_MODE=token and give its token as "
                "RAY_AUTH_TOKEN or in ~/.ray/auth_token)"
            )
        raise ConfigError(None, f"cannot connect to Ray at {address!r}: {exc}{hint}") from exc
    try:
        yield "a local Ray runtime" if local else f"the Ray cluster at {address}"
    finally:
        ray.shutdown()


def worker_count(
    requested: int | None, resources: dict[str, float], cpus: float, gpus: float, cases: int
) -> int:
    """``--workers``, else as many as the cluster's CPUs (or GPUs) hold, at most one per case, at least 1."""
    if requested is not None:
        return requested
    fit = int(resources.get("GPU", 0.0) // gpus) if gpus > 0 else int(resources.get("CPU", 1.0) // cpus)
    return max(1, min(fit, max(cases, 1)))


def check_options(args: argparse.Namespace) -> None:
    """Refuse option values that cannot work before any process is started."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(None, f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_worker <= 0:
        raise ConfigError(None, f"--cpus-per-worker must be positive, got {args.cpus_per_worker}")
    if args.gpus_per_worker < 0:
        raise ConfigError(None, f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if args.max_retries < 0:
        raise ConfigError(None, f"--max-retries must be 0 or more, got {args.max_retries}")
    if str(args.device).startswith("cuda") and args.gpus_per_worker == 0:
        raise ConfigError(None, "--device cuda with --ray needs --gpus-per-worker (e.g. 1)")


# -------------------------------------------------------------------------------------------- actor pool


@dataclass
class _Worker:
    """The driver's view of one actor."""

    index: int
    actor: Any
    starting: Any = None  # ObjectRef of ``info()`` while the actor (re)loads the model
    info: dict[str, Any] | None = None
    last_info: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    busy: bool = False
    start_deadline: float = 0.0
    retry_at: float | None = None  # when to ask a restarting actor for ``info()`` again
    restarts: int = 0
    cases: int = 0
    busy_s: float = 0.0
    pids: list[int] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    ready_at: float | None = None

    def summary(self) -> dict[str, Any]:
        info = self.info or self.last_info
        return {
            "worker": self.index,
            "node": info.get("node"),
            "device": info.get("device"),
            "pids": self.pids,
            "restarts": self.restarts,
            "cases": self.cases,
            "busy_s": round(self.busy_s, 3),
            "model_load_s": [round(s, 3) for s in self.load_s],
        }


@dataclass
class Done:
    """One finished item: the worker's return value, or ``error`` when the item failed outside it."""

    item: Any
    worker: int
    value: Any = None
    error: str | None = None
    attempts: int = 1
    round_trip_s: float = 0.0


class ActorPool:
    """A fixed pool of restartable Ray actors working through a queue, one item in flight per actor.

    ``actor_cls`` must have ``info() -> dict`` (returns once the actor is ready; ``pid``, ``load_s``).
    An item whose actor died is put back at the front of the queue up to ``max_retries`` times; an
    exception inside the actor's method fails that item alone.
    """

    def __init__(
        self,
        actor_cls: type,
        init_args: Sequence[Any],
        *,
        workers: int,
        cpus: float,
        gpus: float,
        max_retries: int,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        remote = ray.remote(actor_cls).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0
        )
        self.cpus, self.gpus = cpus, gpus
        self.max_retries = max_retries
        self.start_timeout = start_timeout
        self.workers = [_Worker(i, remote.remote(*init_args)) for i in range(workers)]
        for w in self.workers:
            self._restart(w)
        self.deaths = 0
        self.retries = 0
        self.last_error = ""
        self._inflight: dict[Any, tuple[_Worker, Any, float]] = {}

    # -- starting and restarting
    def _start_done(self, w: _Worker) -> None:
        from ray.exceptions import ActorDiedError, RayError

        ref, w.starting = w.starting, None
        try:
            info = self._ray.get(ref)
        except ActorDiedError as exc:  # its constructor raised (e.g. the model does not load): for good
            w.alive = False
            self.last_error = _short(exc)
            logger.error("Ray worker %d cannot start: %s", w.index, self.last_error)
            return
        except RayError as exc:  # still (re)starting: ask again in a moment, until the start timeout
            self.last_error = _short(exc)
            if time.monotonic() > w.start_deadline:
                w.alive = False
                logger.error(
                    "Ray worker %d not back within %.0f s: %s", w.index, self.start_timeout, self.last_error
                )
            else:
                w.retry_at = time.monotonic() + 1.0
            return
        w.info, w.last_info, w.retry_at, w.ready_at = info, info, None, time.monotonic()
        w.pids.append(int(info["pid"]))
        w.load_s.append(float(info["load_s"]))
        logger.info(
            "Ray worker %d ready on %s (pid %s, %s, model loaded in %.1f s)",
            w.index,
            info.get("node"),
            info.get("pid"),
            info.get("device"),
            info["load_s"],
        )

    def _restart(self, w: _Worker) -> None:
        """Ask a worker whose process died for ``info()``: it answers once Ray restarted it."""
        w.info, w.retry_at = None, None
        w.start_deadline = time.monotonic() + self.start_timeout
        w.starting = w.actor.info.remote()

    def _ask_again(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.alive and w.starting is None and w.retry_at is not None and w.retry_at <= now:
                w.retry_at = None
                w.starting = w.actor.info.remote()

    def _wait(self, timeout: float) -> list[Any]:
        self._ask_again()
        refs = list(self._inflight) + [w.starting for w in self.workers if w.starting is not None]
        if not refs:
            time.sleep(min(timeout, 0.2))
            return []
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        return ready

    def _starting_worker(self, ref: Any) -> _Worker | None:
        return next((w for w in self.workers if w.starting is not None and w.starting == ref), None)

    def wait_first_ready(self) -> dict[str, Any]:
        """Block until a worker has loaded the model and return its ``info()``; ConfigError if none can."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready = [w for w in self.workers if w.info is not None]
            if ready:
                return ready[0].info  # type: ignore[return-value]
            if not any(w.alive for w in self.workers):
                raise ConfigError(None, f"no Ray worker could load the model: {self.last_error}")
            if time.monotonic() > deadline:
                raise ConfigError(
                    None,
                    f"no Ray worker started within {self.start_timeout:.0f} s; each asks for "
                    f"{self.cpus:g} CPU and {self.gpus:g} GPU; the cluster has "
                    f"{self._ray.cluster_resources()}",
                )
            for ref in self._wait(timeout=1.0):
                w = self._starting_worker(ref)
                if w is not None:
                    self._start_done(w)

    # -- the work loop
    def run(
        self,
        items: Sequence[Any],
        submit: Callable[[Any, Any], Any],
        key: Callable[[Any], str],
        on_worker_death: Callable[[Any], None] | None = None,
    ) -> Iterator[Done]:
        """Yield one :class:`Done` per item, in completion order. ``submit(actor, item)`` returns the
        ObjectRef of the actor method call; ``key(item)`` names the item in retries and messages."""
        from ray.exceptions import RayActorError, RayError, RayTaskError

        queue: deque[Any] = deque(items)
        attempts: Counter[str] = Counter()
        while queue or self._inflight:
            if not any(w.alive for w in self.workers):
                for item in queue:
                    yield Done(item, -1, error=f"no Ray worker left: {self.last_error}", attempts=0)
                return
            for w in self.workers:
                if queue and w.alive and w.info is not None and w.starting is None and not w.busy:
                    item = queue.popleft()
                    self._inflight[submit(w.actor, item)] = (w, item, time.monotonic())
                    w.busy = True
            for ref in self._wait(timeout=1.0):
                starting = self._starting_worker(ref)
                if starting is not None:
                    self._start_done(starting)
                    continue
                w, item, t0 = self._inflight.pop(ref)
                w.busy = False
                name = key(item)
                attempts[name] += 1
                try:
                    value = self._ray.get(ref)
                except RayTaskError as exc:  # raised inside the actor, outside its own per-item handling
                    yield Done(item, w.index, error=_short(exc), attempts=attempts[name])
                    continue
                except (RayActorError, RayError) as exc:
                    self.deaths += 1
                    w.restarts += 1
                    self._restart(w)
                    self.last_error = _short(exc)
                    logger.warning(
                        "Ray worker %d died on %s (attempt %d of %d): %s",
                        w.index,
                        name,
                        attempts[name],
                        self.max_retries + 1,
                        self.last_error,
                    )
                    if on_worker_death is not None:
                        on_worker_death(item)
                    if attempts[name] > self.max_retries:
                        yield Done(
                            item,
                            w.index,
                            error=f"its worker process died {attempts[name]} time(s) while on it "
                            f"(last: {self.last_error})",
                            attempts=attempts[name],
                        )
                    else:
                        self.retries += 1
                        queue.appendleft(item)
                    continue
                w.cases += 1
                yield Done(
                    item, w.index, value=value, attempts=attempts[name], round_trip_s=time.monotonic() - t0
                )

    def close(self) -> None:
        """Stop every actor (their resources go back to the cluster)."""
        for w in self.workers:
            with contextlib.suppress(Exception):
                self._ray.kill(w.actor, no_restart=True)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _actor_node() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # outside Ray (unit use)
        import socket

        return socket.gethostname()


# ------------------------------------------------------------------------------------------ predict actor


class CaseWorker:
    """Ray actor: loads the model once (``load_predictor``), then writes cases with ``predict_one``."""

    def __init__(self, args: argparse.Namespace, threads: int, log_level: int) -> None:
        t0 = time.perf_counter()
        setup_logging(log_level)
        import torch

        from medunet.cli.predict import load_predictor

        torch.set_num_threads(max(1, threads))
        self.args = args
        self.setup = load_predictor(args)
        self.load_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node": _actor_node(),
            "device": str(self.setup.predictor.device),
            "checkpoint_sha256": self.setup.predictor.checkpoint_sha256,
            "options": self.setup.options,
            "load_s": self.load_s,
        }

    def predict(self, case: CaseInput, output: Path) -> dict[str, Any]:
        """Predict and write one case; a failure is returned (``ok: False``), not raised."""
        from medunet.cli.predict import describe_failure, predict_one

        t0 = time.perf_counter()
        try:
            result, seconds = predict_one(self.args, case, output, self.setup)
        except Exception as exc:  # one broken case must not stop the worker
            logger.debug("traceback", exc_info=True)
            return {
                "ok": False,
                "error": str(exc) if isinstance(exc, MedunetError) else f"{type(exc).__name__}: {exc}",
                "message": describe_failure(case, exc),
                "busy_s": time.perf_counter() - t0,
            }
        return {
            "ok": True,
            "seconds": seconds,
            "busy_s": time.perf_counter() - t0,
            "stats": result.stats if self.args.uncertainty else None,
        }


def _worker_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options as a worker needs them: absolute checkpoint paths, a device fitting its resources."""
    from medunet.cli.predict import default_checkpoint

    out = copy.copy(args)
    checkpoints = (
        [Path(c) for c in args.checkpoint] if args.checkpoint else [default_checkpoint(Path(args.bundle))]
    )
    out.checkpoint = [str(c.resolve()) for c in checkpoints]
    if out.device == "auto":
        out.device = "cuda" if args.gpus_per_worker > 0 else "cpu"
    out.func = None  # the handler is not needed (nor always picklable) on a worker
    return out


# ------------------------------------------------------------------------------------------------ driver


class _Progress:
    """The bar plus a log line every :data:`LOG_EVERY_S` (cluster jobs log to files, not terminals)."""

    def __init__(self, total: int, desc: str = "predict") -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self._last_log = self.t0
        self.bar = progress_bar(desc=desc, total=total, unit="case")

    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return 60.0 * (self.done + self.failed) / elapsed if elapsed > 0 else 0.0

    def step(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.bar.update(1)
        self.bar.set_postfix_str(f"{self.rate():.1f} cases/min, {self.failed} failed", refresh=False)
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            left = self.total - self.done - self.failed
            eta = 60.0 * left / self.rate() if self.rate() > 0 else float("nan")
            logger.info(
                "progress: %d/%d cases (%d failed), %.1f cases/min, about %.0f min left",
                self.done + self.failed,
                self.total,
                self.failed,
                self.rate(),
                eta / 60.0,
            )

    def close(self) -> None:
        self.bar.close()


def run_predict_ray(
    args: argparse.Namespace, cases: Sequence[CaseInput], problems: Sequence[str], output: Path
) -> int:
    """``medunet predict --ray``: every case on the actor pool; failures.csv, run.json; exit 1 on failures."""
    from medunet.cli.predict import _finish

    check_options(args)
    t_start = time.time()
    t0 = time.perf_counter()
    resume = True if args.resume is None else bool(args.resume)
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    for case in cases:  # workers have other working folders: every path absolute
        case.path = case.path.resolve()
    wargs = _worker_args(args)
    threads = max(1, int(args.cpus_per_worker))
    level = logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.WARNING
    stages: dict[str, float] = {}
    failures: list[tuple[str, str, str]] = [("", "", p) for p in problems]
    queue: dict[str, Any] = {}
    seconds = Counter[str]()
    overhead: list[float] = []
    skipped: list[CaseInput] = []
    todo: list[CaseInput] = []
    with ray_session(args.ray) as session:
        ray = _import_ray()
        resources = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        n = worker_count(args.workers, resources, args.cpus_per_worker, args.gpus_per_worker, len(cases))
        stages["ray_connect_s"] = time.perf_counter() - t0
        logger.info(
            "%d case(s) on %s (%s): %d worker(s) x %g CPU, %g GPU",
            len(cases),
            session,
            ", ".join(f"{k} {v:g}" for k, v in resources.items() if k != "memory"),
            n,
            args.cpus_per_worker,
            args.gpus_per_worker,
        )
        pool = ActorPool(
            CaseWorker,
            (wargs, threads, level),
            workers=n,
            cpus=args.cpus_per_worker,
            gpus=args.gpus_per_worker,
            max_retries=args.max_retries,
        )
        try:
            t1 = time.perf_counter()
            info = pool.wait_first_ready()
            stages["first_worker_ready_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            if resume:
                todo, skipped = split_complete(cases, output, info["checkpoint_sha256"], info["options"])
            else:
                todo = list(cases)
            stale = remove_stale_partials(output)
            stages["resume_check_s"] = time.perf_counter() - t1
            if stale:
                logger.info("removed %d hidden partial folder(s) of an interrupted run", stale)
            logger.info("%d case(s) to predict, %d already complete (skipped)", len(todo), len(skipped))
            bar = _Progress(len(todo))
            t1 = time.perf_counter()
            try:
                for done in pool.run(
                    todo,
                    submit=lambda actor, case: actor.predict.remote(case, output),
                    key=lambda case: case.name,
                    on_worker_death=lambda case: remove_stale_partials(output, [case.name]),
                ):
                    case = done.item
                    value = done.value or {}
                    if done.error is None and value.get("ok"):
                        queue[case.name] = value.get("stats") or []
                        seconds.update(value["seconds"])
                        overhead.append(max(0.0, done.round_trip_s - float(value["busy_s"])))
                        pool.workers[done.worker].busy_s += float(value["busy_s"])
                        logger.debug("%s: wrote %s", case.name, output / case.name)
                    else:
                        error = done.error or value.get("error") or "unknown error"
                        failures.append((case.name, str(case.path), error))
                        logger.error("%s", value.get("message") or f"{case.name} ({case.path}): {error}")
                    bar.step(done.error is None and bool(value.get("ok")))
            finally:
                bar.close()
            stages["predict_wall_s"] = time.perf_counter() - t1
        finally:
            pool.close()
    wall = time.perf_counter() - t0
    done_n = len(queue)
    predict_wall = stages.get("predict_wall_s", 0.0)
    summary = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "wall_s": round(wall, 3),
        "ray": {
            "address": args.ray,
            "resources": resources,
            "workers": n,
            "cpus_per_worker": args.cpus_per_worker,
            "gpus_per_worker": args.gpus_per_worker,
            "max_retries": args.max_retries,
        },
        "model": {"checkpoint": wargs.checkpoint, "checkpoint_sha256": info.get("checkpoint_sha256")},
        "cases": {
            "total": len(cases),
            "done": done_n,
            "skipped": len(skipped),
            "failed": len(failures),
            "retried": pool.retries,
            "worker_deaths": pool.deaths,
        },
        "stages_s": {k: round(v, 3) for k, v in {**stages, **seconds}.items()},
        "per_case_s": {k: round(v / done_n, 4) for k, v in seconds.items()} if done_n else {},
        "ray_overhead_s_per_case": round(sum(overhead) / len(overhead), 4) if overhead else None,
        "throughput": {
            "cases_per_minute": round(60.0 * done_n / predict_wall, 3) if predict_wall > 0 else None,
            "per_worker": [
                {
                    **w.summary(),
                    "cases_per_minute_busy": round(60.0 * w.cases / w.busy_s, 3) if w.busy_s > 0 else None,
                }
                for w in pool.workers
            ],
        },
        "failures_file": "failures.csv",
    }
    write_failures(output, failures)
    write_run(output, summary)
    logger.info(
        "run: %d done, %d skipped, %d failed in %.1f s (%s cases/min); %s",
        done_n,
        len(skipped),
        len(failures),
        wall,
        summary["throughput"]["cases_per_minute"],
        output / "run.json",
    )
    return _finish(args, output, queue, len(cases), [f"{c}: {e}" if c else e for c, _, e in failures])


# --------------------------------------------------------------------------------------- evaluation


class ScoreWorker:
    """Ray actor for evaluation: loads the model once, then scores labelled cases (``score_case``)."""

    def __init__(
        self,
        checkpoint: str | list[str],
        device: str,
        predictor_kwargs: dict[str, Any],
        threads: int,
        log_level: int,
    ) -> None:
        t0 = time.perf_counter()
        setup_logging(log_level)
        import torch

        from medunet.evaluation import _predictor

        torch.set_num_threads(max(1, threads))
        self.predictor = _predictor(checkpoint, device, **predictor_kwargs)
        self.load_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "node": _actor_node(),
            "device": str(self.predictor.device),
            "load_s": self.load_s,
        }

    def score(self, case: Any, labels: dict[int, str], output_dir: Path, save_predictions: bool) -> Any:
        """A :class:`medunet.evaluation.CaseScore`, or the error text of a bad case."""
        from medunet.evaluation import _score_or_error

        return _score_or_error(self.predictor, case, labels, output_dir, save_predictions)


def score_on_ray(
    checkpoint: str | Path | Sequence[str | Path],
    cases: Sequence[Any],
    labels: dict[int, str],
    output_dir: Path,
    *,
    address: str | None = "local",
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    device: str = "auto",
    predictor_kwargs: dict[str, Any] | None = None,
    save_predictions: bool = False,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Iterator[tuple[Any, Any]]:
    """``(case, CaseScore | error text)`` for every case, in the order of ``cases``, scored on Ray actors.

    Used by :func:`medunet.evaluation.evaluate` with ``ray=...``: the same ``score_case`` as the local
    loop, so per_case.csv and summary.json are the same.
    """
    paths = [checkpoint] if isinstance(checkpoint, str | Path) else list(checkpoint)
    resolved: str | list[str] = [str(Path(c).resolve()) for c in paths]
    if len(resolved) == 1:
        resolved = resolved[0]
    if device == "auto":
        device = "cuda" if gpus_per_worker > 0 else "cpu"
    output_dir = Path(output_dir).resolve()
    level = logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.WARNING
    results: dict[str, Any] = {}
    with ray_session(address) as session:
        ray = _import_ray()
        resources = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        n = worker_count(workers, resources, cpus_per_worker, gpus_per_worker, len(cases))
        logger.info("evaluating %d case(s) on %s with %d worker(s)", len(cases), session, n)
        pool = ActorPool(
            ScoreWorker,
            (resolved, device, dict(predictor_kwargs or {}), max(1, int(cpus_per_worker)), level),
            workers=n,
            cpus=cpus_per_worker,
            gpus=gpus_per_worker,
            max_retries=max_retries,
        )
        try:
            pool.wait_first_ready()
            bar = _Progress(len(cases), desc="evaluate")
            try:
                for done in pool.run(
                    list(cases),
                    submit=lambda actor, case: actor.score.remote(case, labels, output_dir, save_predictions),
                    key=lambda case: str(case.case_id),
                ):
                    results[str(done.item.case_id)] = done.error if done.error is not None else done.value
                    bar.step(not isinstance(results[str(done.item.case_id)], str))
            finally:
                bar.close()
        finally:
            pool.close()
    for case in cases:
        yield case, results[str(case.case_id)]
