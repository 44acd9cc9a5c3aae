import asyncio
import faulthandler
import gc
import inspect
import logging
import sys
import traceback
import warnings

from _support import assert_script_succeeded, run_script
from awaitlet import async_def, awaitlet

SYNC_CHAIN = ["leaf_function", "middle_function", "sync_entry_point"]
CHAIN_LENGTH_LIMIT = 10_000


def run(coroutine_function, *args):
    return asyncio.run(coroutine_function(*args))


def walk_frames(frame):
    """Every frame from ``frame`` down the f_back chain, touching each one's data."""
    walked = []
    while frame is not None:
        assert len(walked) < CHAIN_LENGTH_LIMIT, "f_back chain does not end"
        walked.append((frame.f_code.co_name, frame.f_lineno, frame.f_code.co_filename))
        frame = frame.f_back
    return walked


def frame_names(frame):
    return [name for name, _, _ in walk_frames(frame)]


def run_in_sync_chain(observe, switches_before=1, switches_after=1):
    """Run ``observe()`` in leaf_function <- middle_function <- sync_entry_point."""

    def leaf_function():
        for _ in range(switches_before):
            awaitlet(asyncio.sleep(0))
        observed = observe()
        for _ in range(switches_after):
            awaitlet(asyncio.sleep(0))
        return observed

    def middle_function():
        return leaf_function()

    def sync_entry_point():
        return middle_function()

    async def main():
        return await async_def(sync_entry_point)

    return run(main)


def test_getframe_chain_lists_the_sync_frames_before_any_switch():
    names = run_in_sync_chain(lambda: frame_names(sys._getframe(1)), switches_before=0)
    assert names[:3] == SYNC_CHAIN


def test_getframe_chain_lists_the_sync_frames_after_a_switch():
    names = run_in_sync_chain(lambda: frame_names(sys._getframe(1)))
    assert names[:3] == SYNC_CHAIN


def test_getframe_chain_lists_the_sync_frames_after_many_switches():
    names = run_in_sync_chain(
        lambda: frame_names(sys._getframe(1)), switches_before=1000, switches_after=10
    )
    assert names[:3] == SYNC_CHAIN


def test_getframe_with_depth_reaches_the_entry_point():
    def observe():
        caller = sys._getframe(1).f_code.co_name
        callers_caller = sys._getframe(2).f_code.co_name
        outermost = sys._getframe(3).f_code.co_name
        return [caller, callers_caller, outermost]

    assert run_in_sync_chain(observe, switches_before=5) == SYNC_CHAIN


def test_extract_stack_ends_with_the_sync_frames():
    def observe():
        return [summary.name for summary in traceback.extract_stack(sys._getframe(1))]

    names = run_in_sync_chain(observe, switches_before=20)
    assert names[-3:] == list(reversed(SYNC_CHAIN))


def test_format_stack_renders_the_sync_frames():
    formatted = run_in_sync_chain(lambda: "".join(traceback.format_stack()), switches_before=20)
    for name in SYNC_CHAIN:
        assert f"in {name}" in formatted


def test_inspect_stack_lists_the_sync_frames_with_their_source_lines():
    def observe():
        return [
            (info.function, "".join(info.code_context or []).strip())
            for info in inspect.stack()[1:4]
        ]

    observed = run_in_sync_chain(observe, switches_before=20)
    assert [function for function, _ in observed] == SYNC_CHAIN
    assert observed[0][1] == "observed = observe()"
    assert observed[1][1] == "return leaf_function()"
    assert observed[2][1] == "return middle_function()"


def test_frame_line_numbers_are_current_after_switches():
    def sync_entry_point():
        first_line = sys._getframe().f_lineno
        awaitlet(asyncio.sleep(0))
        second_line = sys._getframe().f_lineno
        awaitlet(asyncio.sleep(0))
        third_line = sys._getframe().f_lineno
        return first_line, second_line, third_line

    async def main():
        return await async_def(sync_entry_point)

    first_line, second_line, third_line = run(main)
    assert second_line == first_line + 2
    assert third_line == first_line + 4


def test_caller_locals_are_readable_after_a_switch():
    def observe():
        return sys._getframe(2).f_locals["entry_point_local"]

    def leaf_function():
        awaitlet(asyncio.sleep(0))
        return observe()

    def sync_entry_point():
        entry_point_local = "visible"
        awaitlet(asyncio.sleep(0))
        result = leaf_function()
        assert entry_point_local == "visible"
        return result

    async def main():
        return await async_def(sync_entry_point)

    assert run(main) == "visible"


def test_suspended_sync_frames_can_be_inspected_from_the_task():
    captured_frames = []

    async def inspect_suspended_frames():
        frame = captured_frames[0]
        return frame_names(frame)[:3], frame.f_locals["leaf_local"]

    def leaf_function():
        leaf_local = "leaf value"
        captured_frames.append(sys._getframe())
        result = awaitlet(inspect_suspended_frames())
        assert leaf_local == "leaf value"
        return result

    def middle_function():
        return leaf_function()

    def sync_entry_point():
        return middle_function()

    async def main():
        return await async_def(sync_entry_point)

    names, leaf_local = run(main)
    assert names == SYNC_CHAIN
    assert leaf_local == "leaf value"


def test_frames_captured_in_sync_code_stay_readable_after_it_finished():
    captured_frames = []

    def leaf_function():
        leaf_local = "leaf value"
        awaitlet(asyncio.sleep(0))
        captured_frames.append(sys._getframe())
        awaitlet(asyncio.sleep(0))
        return leaf_local

    def sync_entry_point():
        leaf_function()
        awaitlet(asyncio.sleep(0))

    async def main():
        await async_def(sync_entry_point)
        await asyncio.sleep(0)
        return walk_frames(captured_frames[0])

    walked = run(main)
    assert walked[0][0] == "leaf_function"
    assert captured_frames[0].f_locals["leaf_local"] == "leaf value"


def test_frame_chain_of_the_sync_code_can_be_walked_to_its_end():
    walked = run_in_sync_chain(lambda: walk_frames(sys._getframe()), switches_before=50)
    assert [name for name, _, _ in walked][1:4] == SYNC_CHAIN


def test_frame_chain_of_the_awaiting_coroutine_is_intact_after_switches():
    def sync_entry_point():
        for _ in range(50):
            awaitlet(asyncio.sleep(0))

    async def awaiting_coroutine():
        await async_def(sync_entry_point)
        return frame_names(sys._getframe())

    async def main():
        return await awaiting_coroutine()

    names = run(main)
    assert names[:2] == ["awaiting_coroutine", "main"]


def test_frame_chain_inside_a_coroutine_awaited_by_sync_code_can_be_walked():
    async def awaited_coroutine():
        await asyncio.sleep(0)
        return frame_names(sys._getframe())

    def sync_entry_point():
        awaitlet(asyncio.sleep(0))
        return awaitlet(awaited_coroutine())

    async def main():
        return await async_def(sync_entry_point)

    names = run(main)
    assert names[0] == "awaited_coroutine"
    assert "sync_entry_point" not in names


def test_stack_inspection_in_many_concurrent_sync_stacks():
    def leaf_function(index):
        for _ in range(5):
            awaitlet(asyncio.sleep(0))
            names = [summary.name for summary in traceback.extract_stack()]
            assert names[-2:] == ["sync_entry_point", "leaf_function"], names
            assert sys._getframe(1).f_locals["index"] == index
        return index

    def sync_entry_point(index):
        return leaf_function(index)

    async def main():
        return await asyncio.gather(*(async_def(sync_entry_point, index) for index in range(50)))

    assert run(main) == list(range(50))


def test_stack_depth_is_the_same_before_and_after_switches():
    def depth():
        return len(walk_frames(sys._getframe(1)))

    def leaf_function():
        before = depth()
        for _ in range(100):
            awaitlet(asyncio.sleep(0))
        return before, depth()

    def sync_entry_point():
        return leaf_function()

    async def main():
        return await async_def(sync_entry_point)

    before, after = run(main)
    assert before == after


def test_warning_stacklevel_points_at_the_sync_caller_after_a_switch():
    def warns_for_caller():
        awaitlet(asyncio.sleep(0))
        warnings.warn("attributed to caller", UserWarning, stacklevel=2)

    def sync_entry_point():
        awaitlet(asyncio.sleep(0))
        expected_line = sys._getframe().f_lineno + 1
        warns_for_caller()
        return expected_line

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expected_line = await async_def(sync_entry_point)
        return expected_line, caught

    expected_line, caught = run(main)
    assert len(caught) == 1
    assert caught[0].filename == __file__
    assert caught[0].lineno == expected_line


def test_logging_records_the_sync_function_name_after_a_switch():
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append((record.funcName, record.lineno, record.getMessage()))

    logger = logging.getLogger("awaitlet.tests.frames")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def logging_function():
        awaitlet(asyncio.sleep(0))
        logger.info("from sync code")

    async def main():
        await async_def(logging_function)

    try:
        run(main)
    finally:
        logger.removeHandler(handler)
    assert [(name, message) for name, _, message in records] == [
        ("logging_function", "from sync code")
    ]


def test_faulthandler_dumps_the_sync_stack_without_crashing(tmp_path):
    dump_path = tmp_path / "dump.txt"

    def leaf_function():
        awaitlet(asyncio.sleep(0))
        with open(dump_path, "w") as dump_file:
            faulthandler.dump_traceback(dump_file, all_threads=False)
        awaitlet(asyncio.sleep(0))

    def sync_entry_point():
        leaf_function()

    async def main():
        await async_def(sync_entry_point)
        with open(dump_path, "a") as dump_file:
            faulthandler.dump_traceback(dump_file, all_threads=True)

    run(main)
    dumped = dump_path.read_text()
    assert "leaf_function" in dumped
    assert "sync_entry_point" in dumped


def test_traceback_frames_stay_walkable_after_the_coroutine_is_gone():
    def raising_helper():
        helper_local = "helper value"
        awaitlet(asyncio.sleep(0))
        raise LookupError(helper_local)

    def sync_entry_point():
        awaitlet(asyncio.sleep(0))
        raising_helper()

    async def main():
        try:
            await async_def(sync_entry_point)
        except LookupError as caught:
            return caught
        return None

    caught = run(main)
    gc.collect()
    walked = []
    for frame, line_number in traceback.walk_tb(caught.__traceback__):
        walked.append((frame.f_code.co_name, line_number, dict(frame.f_locals)))
        walk_frames(frame)
    names = [name for name, _, _ in walked]
    assert names[-2:] == ["sync_entry_point", "raising_helper"]
    assert walked[-1][2]["helper_local"] == "helper value"
    assert "".join(traceback.format_exception(caught))


def test_frames_captured_from_a_closed_coroutine_stay_readable():
    captured_frames = []

    class Suspend:
        def __await__(self):
            return (yield)

    def leaf_function():
        leaf_local = "leaf value"
        captured_frames.append(sys._getframe())
        awaitlet(Suspend())
        return leaf_local

    def sync_entry_point():
        return leaf_function()

    coro = async_def(sync_entry_point)
    coro.send(None)
    coro.close()
    del coro
    gc.collect()
    frame = captured_frames[0]
    assert frame.f_code.co_name == "leaf_function"
    assert frame.f_locals["leaf_local"] == "leaf value"
    walk_frames(frame)


def test_sync_stack_can_be_sampled_from_another_thread():
    result = run_script("sample_stacks_from_another_thread.py")
    assert_script_succeeded(result, ["sampled sync frames", "sample_stacks_from_another_thread OK"])
