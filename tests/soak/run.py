"""Randomized, seeded soak of async_def/awaitlet: thousands of concurrent tasks per round.

    python tests/soak/run.py --minutes 1 --threads 1
    python tests/soak/run.py --minutes 30 --threads 4 --seed 1234
    python tests/soak/run.py --seed 1234 --replay 0:7:42     # one task, alone, verbosely

Each round runs ``--tasks`` tasks at once on a fresh event loop (with ``--threads N``,
every thread runs its own rounds on its own loop, the tasks split between them). Each
task's plan (see ``workload.py``) comes from ``random.Random`` seeded with
``SEED:THREAD:ROUND:TASK``, so a seed names every plan of a run; which plans run
concurrently with which, and where a timer lands, depends on timing. A failure report
names the seed and the task, and ``--replay THREAD:ROUND:TASK`` runs that plan alone.

After the warm-up rounds, and at the end, every thread stops at a barrier and the run
collects garbage and samples resident memory, open file descriptors and
``len(gc.get_objects())``; growth between the two samples, per 100,000 operations
(an operation: one step of a plan or one task), must stay under the bounds below. A run
with fewer operations than that gets the bound itself as its allowance; resident memory
is judged only over at least MIN_OPS_FOR_RSS operations.

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import workload

#: Growth allowed per 100,000 operations after the warm-up.
RSS_BOUND_BYTES = 2 * 1024 * 1024
FD_BOUND = 0
#: Resident memory moves by a MiB or two between rounds (allocator pools, how many stacks a
#: round holds at its peak): it is judged only over at least this many operations.
MIN_OPS_FOR_RSS = 150_000
OBJECTS_BOUND = 2_000
PER = 100_000
#: The warm-up: at least this many rounds (--warmup-rounds), and this share of the run's
#: time. Resident memory climbs for the first hundred thousand operations or so: the stack
#: pool's slots are touched ever deeper, up to what a slot keeps resident.
WARMUP_ROUNDS = 10
WARMUP_SHARE = 0.25
#: A round whose tasks have not all finished by then is reported as hung.
ROUND_LIMIT_SECONDS = 300.0
MAX_REPORTED_FAILURES = 20


@dataclass
class Sample:
    rss: int
    fds: int
    objects: int
    ops: int


@dataclass
class Totals:
    ops: int = 0
    tasks: int = 0
    rounds: int = 0


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sample(ops: int) -> Sample:
    gc.collect()
    gc.collect()
    return Sample(_rss(), _fds(), len(gc.get_objects()), ops)


def plan_for(seed: int, thread: int, round_index: int, task: int) -> workload.Plan:
    return workload.make_plan(random.Random(f"{seed}:{thread}:{round_index}:{task}"))


def run_round(
    seed: int, thread: int, round_index: int, tasks: int, inject: str
) -> workload.RoundState:
    """Runs one round's tasks concurrently on a new event loop."""
    plans = [plan_for(seed, thread, round_index, index) for index in range(tasks)]

    async def main() -> workload.RoundState:
        state = workload.RoundState(lock=asyncio.Lock(), inject=inject)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(
            lambda _loop, context: state.failures.append(
                f"thread {thread} round {round_index}: event loop reported: "
                f"{context.get('message')} {context.get('exception')!r}"
            )
        )
        corrupt = bool(inject) and thread == 0 and round_index == 0
        drivers = [
            asyncio.ensure_future(
                workload.drive(
                    state, f"task {thread}:{round_index}:{index}", plan, corrupt and index < 50
                )
            )
            for index, plan in enumerate(plans)
        ]
        done, pending = await asyncio.wait(drivers, timeout=ROUND_LIMIT_SECONDS)
        for driver in pending:
            state.failures.append(
                f"task {thread}:{round_index}:{drivers.index(driver)}: did not finish "
                f"within {ROUND_LIMIT_SECONDS:.0f} s"
            )
            driver.cancel()
        for driver in done:
            if driver.exception() is not None:
                state.failures.append(f"a driver raised {driver.exception()!r}")
        if state.background:
            await asyncio.wait(set(state.background), timeout=ROUND_LIMIT_SECONDS)
        if inject == "leak-objects":
            _leaked.extend([] for _ in range(state.ops))
        return state

    return asyncio.run(main())


_leaked: list[Any] = []


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failures: list[str] = []
        self.totals = Totals()
        self.lock = threading.Lock()

    def record(self, state: workload.RoundState, tasks: int) -> None:
        with self.lock:
            self.failures.extend(state.failures)
            self.totals.ops += state.ops
            self.totals.tasks += tasks
            self.totals.rounds += 1

    def run(self) -> int:
        args = self.args
        self.started = time.monotonic()
        self.deadline = self.started + args.minutes * 60
        self.warmup_until = self.started + args.minutes * 60 * WARMUP_SHARE
        self.baseline: Sample | None = None
        per_thread = max(1, args.tasks // args.threads)
        if args.threads == 1:
            rounds = 0
            while self.more(rounds):
                state = run_round(args.seed, 0, rounds, per_thread, args.inject)
                self.record(state, per_thread)
                rounds += 1
                self.after_round(rounds)
            final = sample(self.totals.ops)
        else:
            rounds, final = self.run_threads(per_thread)
        elapsed = time.monotonic() - self.started
        print(
            f"soak: {self.totals.rounds} rounds ({rounds} per thread), "
            f"{self.totals.tasks:,} tasks, {self.totals.ops:,} operations "
            f"in {elapsed:.1f} s ({self.totals.ops / max(elapsed, 1e-9):,.0f} ops/s)"
        )
        self.check_growth(self.baseline, final)
        return self.report()

    def more(self, rounds: int) -> bool:
        """Whether to run another round: until the time is up, and at least one round
        after the warm-up."""
        return (
            self.baseline is None
            or rounds <= self.args.warmup_rounds
            or time.monotonic() < self.deadline
        )

    def after_round(self, rounds: int) -> None:
        """Between rounds, with every loop closed: the baseline sample once the warm-up is
        over, a progress line with --verbose."""
        if self.baseline is None:
            if rounds >= self.args.warmup_rounds and time.monotonic() >= self.warmup_until:
                self.baseline = sample(self.totals.ops)
                if self.args.verbose:
                    self.progress(self.baseline, "baseline")
        elif self.args.verbose:
            self.progress(sample(self.totals.ops), "")

    def run_threads(self, per_thread: int) -> tuple[int, Sample]:
        """Every thread runs a round on its own loop; between rounds all wait at a barrier,
        where the main thread samples."""
        args = self.args
        barrier = threading.Barrier(args.threads + 1)
        stop = False
        rounds = 0

        def worker(thread: int) -> None:
            try:
                while True:
                    barrier.wait()
                    if stop:
                        return
                    state = run_round(args.seed, thread, rounds, per_thread, args.inject)
                    self.record(state, per_thread)
                    barrier.wait()
            except threading.BrokenBarrierError:
                return
            except BaseException:
                with self.lock:
                    self.failures.append(f"thread {thread} died:\n{traceback.format_exc()}")
                barrier.abort()

        threads = [
            threading.Thread(target=worker, args=(index,), name=f"soak-{index}")
            for index in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        try:
            while self.more(rounds):
                barrier.wait(timeout=ROUND_LIMIT_SECONDS * 2)  # the threads start a round
                barrier.wait(timeout=ROUND_LIMIT_SECONDS * 2)  # ... and have finished it
                rounds += 1
                self.after_round(rounds)
            # Sampled while the threads still exist, as the baseline was.
            final = sample(self.totals.ops)
            stop = True
            barrier.wait(timeout=ROUND_LIMIT_SECONDS * 2)
        except threading.BrokenBarrierError:
            final = sample(self.totals.ops)
            self.failures.append("a soak thread stopped early (see above)")
        for thread in threads:
            thread.join(timeout=ROUND_LIMIT_SECONDS)
            if thread.is_alive():
                self.failures.append(f"{thread.name} did not stop")
        return rounds, final

    def progress(self, now: Sample, note: str) -> None:
        print(
            f"  {time.monotonic() - self.started:7.1f} s  {now.ops:>12,} ops  "
            f"rss {now.rss / 2**20:8.1f} MiB  fds {now.fds:4}  objects {now.objects:,}  {note}",
            flush=True,
        )

    def check_growth(self, baseline: Sample | None, final: Sample) -> None:
        if baseline is None:
            self.failures.append("no baseline sample was taken")
            return
        measured = final.ops - baseline.ops
        scale = max(measured, PER) / PER
        print(
            f"soak: after warm-up ({baseline.ops:,} ops), over {measured:,} ops: "
            f"rss {baseline.rss / 2**20:.1f} -> {final.rss / 2**20:.1f} MiB, "
            f"fds {baseline.fds} -> {final.fds}, "
            f"gc objects {baseline.objects:,} -> {final.objects:,}"
        )
        per = PER / max(measured, 1)
        print(
            f"soak: growth per {PER:,} ops: rss {(final.rss - baseline.rss) * per / 1024:,.0f} "
            f"KiB (bound {RSS_BOUND_BYTES // 1024:,} KiB), fds "
            f"{(final.fds - baseline.fds) * per:.2f} (bound {FD_BOUND}), gc objects "
            f"{(final.objects - baseline.objects) * per:,.0f} (bound {OBJECTS_BOUND:,})"
        )
        checks = [
            ("open file descriptors", final.fds - baseline.fds, FD_BOUND),
            ("gc-tracked objects", final.objects - baseline.objects, OBJECTS_BOUND),
        ]
        if measured >= MIN_OPS_FOR_RSS:
            checks.append(("resident memory (bytes)", final.rss - baseline.rss, RSS_BOUND_BYTES))
        else:
            print(
                f"soak: resident memory not judged: {measured:,} operations after the warm-up, "
                f"fewer than {MIN_OPS_FOR_RSS:,} (its noise is about 2 MiB)"
            )
        for name, grown, bound in checks:
            if grown > bound * scale:
                self.failures.append(
                    f"{name} grew by {grown:,} over {measured:,} operations: more than "
                    f"{bound:,} per {PER:,}"
                )

    def report(self) -> int:
        args = self.args
        again = f"python tests/soak/run.py --seed {args.seed} --minutes {args.minutes:g} " + (
            f"--threads {args.threads} --tasks {args.tasks}"
        )
        if not self.failures:
            print(f"soak: OK (seed {args.seed}; again: {again})")
            return 0
        print(f"soak: FAILED: {len(self.failures)} failures (seed {args.seed})")
        for failure in self.failures[:MAX_REPORTED_FAILURES]:
            print(f"  {failure}")
        if len(self.failures) > MAX_REPORTED_FAILURES:
            print(f"  ... and {len(self.failures) - MAX_REPORTED_FAILURES} more")
        print(f"soak: run again: {again}")
        print(
            "soak: one task alone: python tests/soak/run.py "
            f"--seed {args.seed} --replay THREAD:ROUND:TASK"
        )
        return 1


def replay(args: argparse.Namespace) -> int:
    thread, round_index, index = (int(part) for part in args.replay.split(":"))
    plan = plan_for(args.seed, thread, round_index, index)
    print(f"plan: {plan}")
    print(f"expected: {workload.model(plan.spec)}")

    async def main() -> workload.RoundState:
        state = workload.RoundState(lock=asyncio.Lock())
        await workload.drive(state, f"task {args.replay}", plan)
        return state

    state = asyncio.run(main())
    for failure in state.failures:
        print(f"FAILED: {failure}")
    print("replay: OK" if not state.failures else "replay: FAILED")
    return 0 if not state.failures else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run")
    parser.add_argument("--threads", type=int, default=1, help="threads, each with its own loop")
    parser.add_argument("--tasks", type=int, default=2000, help="concurrent tasks per round")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--replay", metavar="THREAD:ROUND:TASK", help="run one task's plan")
    parser.add_argument("--verbose", action="store_true", help="sample after every round")
    parser.add_argument(
        "--warmup-rounds", type=int, default=WARMUP_ROUNDS, help="rounds before the baseline"
    )
    parser.add_argument(
        "--inject",
        choices=["wrong-result", "skip-finally", "leak-objects"],
        default="",
        help="a deliberate fault (for testing the soak's own checks)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    unraisable: list[str] = []

    def hook(info: Any) -> None:
        unraisable.append(f"unraisable exception: {info.exc_value!r} in {info.object!r}")

    sys.unraisablehook = hook
    # A warning (a coroutine never awaited, a resource left open) is a failure: raised where
    # it is issued, or reported to the hook above from a finalizer.
    warnings.simplefilter("error")
    print(
        f"soak: seed {args.seed}, {args.threads} thread(s), {args.tasks} tasks per round, "
        f"{args.minutes:g} min, Python {sys.version.split()[0]}",
        flush=True,
    )
    if args.replay:
        return replay(args)
    runner = Runner(args)
    status = runner.run()
    if unraisable:
        print(f"soak: FAILED: {len(unraisable)} unraisable exceptions (seed {args.seed})")
        for line in unraisable[:MAX_REPORTED_FAILURES]:
            print(f"  {line}")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
