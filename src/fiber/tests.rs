//! The engine's tests: corosensei coroutines on pooled stacks without Python, then
//! [`Fiber`] running Python functions in an embedded interpreter.
//!
//! The interpreter is the one the crate is built for (`PYO3_PYTHON`), started once for the
//! whole test process by [`with_python`]; its shared library must be on the loader's path
//! (see the README's Testing section).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use corosensei::stack::Stack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyList, PyModule, PyTuple};

use super::*;
use pyo3::IntoPyObjectExt;

/// Serializes the tests that use the stack pool or the interpreter: the pool's shared list
/// and its warnings are process-wide.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `body` on a new thread (with an empty stack cache of its own) and waits for it;
/// its panic is the caller's.
pub(crate) fn in_fresh_thread<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| match scope.spawn(body).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Runs `body` attached to the embedded interpreter (started on first use), on a new thread:
/// under a thread state of its own, which is deleted when `body` returns.
pub(crate) fn with_python<R: Send>(body: impl for<'py> FnOnce(Python<'py>) -> R + Send) -> R {
    let _serial = serial();
    start_python();
    in_fresh_thread(|| Python::attach(body))
}

/// Starts the embedded interpreter, once, and checks that it is the one the crate was built
/// for.
fn start_python() {
    static START: Once = Once::new();
    START.call_once(|| {
        Python::initialize();
        Python::attach(|py| {
            crate::pystate::tests::assert_running_the_compiled_release(py);
            crate::pystate::check_interpreter(py).expect("the thread-state layout check");
        });
    });
}

const FRAMES: usize = 16 * 1024;

#[test]
fn a_coroutine_on_a_pooled_stack_passes_values_both_ways() {
    let _serial = serial();
    in_fresh_thread(|| {
        let stack = stack_pool::take(FRAMES).unwrap();
        let (limit, base) = (stack.limit().get(), stack.base().get());
        let frames_top = base + FRAMES;
        // The frames area is not the machine stack's: fill it, and check it after.
        // SAFETY: the top FRAMES bytes of the slot just taken, writable and unused.
        unsafe { std::ptr::write_bytes(base as *mut u8, 0x3c, FRAMES) };
        let mut coroutine = Coroutine::with_stack(stack, |yielder, first: u64| {
            let local = 0u8;
            let here = std::ptr::addr_of!(local) as usize;
            let second = yielder.suspend((first + 1, here));
            let third = yielder.suspend((second * 2, here));
            format!("{first} {second} {third}")
        });
        let CoroutineResult::Yield((value, here)) = coroutine.resume(1) else {
            panic!("must suspend");
        };
        assert_eq!(value, 2);
        assert!((limit..base).contains(&here), "a local at {here:#x}");
        assert!(matches!(
            coroutine.resume(10),
            CoroutineResult::Yield((20, _))
        ));
        assert!(coroutine.started() && !coroutine.done());
        match coroutine.resume(7) {
            CoroutineResult::Return(text) => assert_eq!(text, "1 10 7"),
            CoroutineResult::Yield(_) => panic!("must return"),
        }
        assert!(coroutine.done());
        // SAFETY: the frames area, still owned (by the finished coroutine's stack).
        let frames = unsafe { std::slice::from_raw_parts(base as *const u8, FRAMES) };
        assert!(frames.iter().all(|byte| *byte == 0x3c));
        // SAFETY: as above; cleared for the slot's next user.
        unsafe { std::ptr::write_bytes(base as *mut u8, 0, frames_top - base) };

        // The stack goes back to the pool and serves the next coroutine.
        let stack = coroutine.into_stack();
        let bottom = stack.limit().get();
        stack_pool::give_back(stack);
        let mut next = Coroutine::with_stack(
            stack_pool::take(FRAMES).unwrap(),
            |_: &Yielder<(), ()>, ()| 5,
        );
        assert!(matches!(next.resume(()), CoroutineResult::Return(5)));
        let stack = next.into_stack();
        assert_eq!(stack.limit().get(), bottom);
        stack_pool::give_back(stack);
    });
}

#[test]
fn a_coroutine_that_never_started_gives_its_stack_back_after_dropping_its_closure() {
    let _serial = serial();
    in_fresh_thread(|| {
        let captured = std::sync::Arc::new(());
        let held = captured.clone();
        let mut coroutine: Coroutine<(), (), (), _> =
            Coroutine::with_stack(stack_pool::take(FRAMES).unwrap(), move |_, ()| {
                drop(held);
                unreachable!("never resumed")
            });
        assert!(!coroutine.started() && !coroutine.done());
        // What `Fiber`'s drop does for a fiber that never started: `into_stack` refuses a
        // coroutine that is not done, and `force_unwind` drops the closure without running it.
        coroutine.force_unwind();
        assert!(coroutine.done());
        assert_eq!(
            std::sync::Arc::strong_count(&captured),
            1,
            "the closure was dropped"
        );
        let stack = coroutine.into_stack();
        let bottom = stack.limit().get();
        stack_pool::give_back(stack);
        let stack = stack_pool::take(FRAMES).unwrap();
        assert_eq!(stack.limit().get(), bottom);
        stack_pool::give_back(stack);
    });
}

// ---- Fiber, with Python ----

/// Where the last [`suspender`] call ran: an address on the suspending fiber's stack.
static SUSPENDED_AT: AtomicUsize = AtomicUsize::new(0);

/// `suspend(value=None)`: suspends the running fiber with `value`; returns what it is resumed
/// with, or raises what is thrown in.
fn suspender(py: Python<'_>) -> Bound<'_, PyCFunction> {
    PyCFunction::new_closure(
        py,
        Some(c"suspend"),
        None,
        |args: &Bound<'_, PyTuple>, _| -> PyResult<Py<PyAny>> {
            let py = args.py();
            let value = match args.len() {
                0 => py.None(),
                _ => args.get_item(0)?.unbind(),
            };
            let fiber = ActiveFiber::running()
                .ok_or_else(|| PyRuntimeError::new_err("suspend() outside a fiber"))?;
            let local = 0u8;
            SUSPENDED_AT.store(std::ptr::addr_of!(local) as usize, Ordering::Relaxed);
            match fiber.suspend(py, value) {
                Resume::Value(value) => Ok(value),
                Resume::Throw(err) => Err(err),
            }
        },
    )
    .expect("suspend function")
}

const PYTHON_HELPERS: &std::ffi::CStr = cr#"
import sys

def two_steps(suspend, x):
    a = suspend(x + 1)
    b = suspend(a * 2)
    return (a, b)

def raises_after_suspending(suspend):
    suspend()
    raise ValueError("boom")

def catches_key_error(suspend):
    try:
        suspend("waiting")
    except KeyError as error:
        return "caught " + error.args[0]
    return "nothing thrown"

def lets_it_through(suspend):
    suspend()
    return "not reached"

def keywords(a, b=0, *, c):
    return ("function", a, b, c)

class Callable:
    def __call__(self, a, *, c):
        return ("object", a, c)

def where_am_i(suspend):
    frame = sys._getframe()
    suspend()
    return frame.f_back is None, frame.f_code.co_name

def handles_while_suspended(suspend):
    try:
        raise KeyError("in the fiber")
    except KeyError:
        suspend(repr(sys.exc_info()[1]))
        return repr(sys.exc_info()[1])

def cleans_up(suspend, record):
    try:
        suspend("first")
    except BaseException as error:
        record.append(type(error).__name__)
        raise
    finally:
        record.append("finally")

def waiter(record):
    try:
        yield
    finally:
        record.append("awaitable closed")

def calls_native(function):
    return function()

def shares_context(suspend, var):
    var.set("set on the fiber")
    suspend()
    return var.get()
"#;

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    PyModule::from_code(py, PYTHON_HELPERS, c"fiber_tests.py", c"fiber_tests")
        .expect("test helpers")
}

/// A fiber calling the helper `name` with `suspend` and then `args`.
fn fiber_calling(py: Python<'_>, kind: Kind, name: &str, args: &[Bound<'_, PyAny>]) -> Fiber {
    let function = helpers(py).getattr(name).expect("helper");
    let mut all = vec![suspender(py).into_any()];
    all.extend(args.iter().cloned());
    let args = PyTuple::new(py, all).unwrap().unbind();
    Fiber::calling(py, kind, function.unbind(), args, None).expect("Fiber::calling")
}

fn resume_value<'py>(py: Python<'py>, fiber: &mut Fiber, value: impl IntoPyObject<'py>) -> Step {
    fiber.resume(py, Resume::Value(value.into_py_any(py).unwrap()))
}

fn int(py: Python<'_>, value: i64) -> Bound<'_, PyAny> {
    value.into_bound_py_any(py).unwrap()
}

fn suspended_with(py: Python<'_>, step: Step) -> String {
    match step {
        Step::Suspended(value) => value.bind(py).repr().unwrap().to_string(),
        Step::Finished(result) => panic!("finished instead: {result:?}"),
    }
}

fn finished_with(py: Python<'_>, step: Step) -> PyResult<String> {
    match step {
        Step::Finished(result) => result.map(|value| value.bind(py).repr().unwrap().to_string()),
        Step::Suspended(value) => panic!("suspended instead, with {value:?}"),
    }
}

#[test]
fn a_python_function_suspends_and_finishes_on_a_fiber() {
    with_python(|py| {
        let mut fiber = fiber_calling(py, Kind::AsyncDef, "two_steps", &[int(py, 1)]);
        assert!(!fiber.is_suspended());
        assert_eq!(fiber.thread(), current_thread());
        assert!(ActiveFiber::running().is_none());
        assert_eq!(suspended_with(py, resume_value(py, &mut fiber, ())), "2");
        assert!(fiber.is_suspended());
        assert!(fiber.can_be_finished_here(py));
        assert!(
            ActiveFiber::running().is_none(),
            "no fiber runs once it suspended"
        );
        assert_eq!(suspended_with(py, resume_value(py, &mut fiber, 10)), "20");
        assert_eq!(
            finished_with(py, resume_value(py, &mut fiber, 5)).unwrap(),
            "(10, 5)"
        );
        assert!(!fiber.is_suspended());
    });
}

#[test]
fn keyword_arguments_reach_functions_and_other_callables() {
    with_python(|py| {
        let helpers = helpers(py);
        for (name, expected) in [
            ("keywords", "('function', 1, 2, 3)"),
            ("Callable", "('object', 1, 3)"),
        ] {
            let mut function = helpers.getattr(name).unwrap();
            if name == "Callable" {
                function = function.call0().unwrap();
            }
            let kwargs = PyDict::new(py);
            kwargs.set_item("c", 3).unwrap();
            if name == "keywords" {
                kwargs.set_item("b", 2).unwrap();
            }
            let args = PyTuple::new(py, [1]).unwrap().unbind();
            let mut fiber = Fiber::calling(
                py,
                Kind::AsyncDef,
                function.unbind(),
                args,
                Some(kwargs.unbind()),
            )
            .unwrap();
            let step = resume_value(py, &mut fiber, ());
            assert_eq!(finished_with(py, step).unwrap(), expected);
        }
    });
}

#[test]
fn an_exception_raised_on_the_fiber_comes_out_of_resume() {
    with_python(|py| {
        let mut fiber = fiber_calling(py, Kind::AsyncDef, "raises_after_suspending", &[]);
        suspended_with(py, resume_value(py, &mut fiber, ()));
        let err = finished_with(py, resume_value(py, &mut fiber, ())).unwrap_err();
        assert!(err.is_instance_of::<PyValueError>(py));
        assert_eq!(err.value(py).to_string(), "boom");
        // The traceback reaches into the fiber's function.
        let traceback = err.traceback(py).expect("a traceback");
        let mut names = vec![];
        let mut entry = Some(traceback.into_any());
        while let Some(current) = entry.filter(|entry| !entry.is_none()) {
            let code = current
                .getattr("tb_frame")
                .unwrap()
                .getattr("f_code")
                .unwrap();
            names.push(code.getattr("co_name").unwrap().to_string());
            entry = current.getattr("tb_next").ok();
        }
        assert_eq!(
            names.last().map(String::as_str),
            Some("raises_after_suspending")
        );
    });
}

#[test]
fn an_exception_thrown_in_is_raised_at_the_suspension_point() {
    with_python(|py| {
        let mut fiber = fiber_calling(py, Kind::AsyncDef, "catches_key_error", &[]);
        assert_eq!(
            suspended_with(py, resume_value(py, &mut fiber, ())),
            "'waiting'"
        );
        let step = fiber.resume(py, Resume::Throw(PyKeyError::new_err("here")));
        assert_eq!(finished_with(py, step).unwrap(), "'caught here'");

        // Uncaught, the very exception object comes back out.
        let mut fiber = fiber_calling(py, Kind::AsyncDef, "lets_it_through", &[]);
        suspended_with(py, resume_value(py, &mut fiber, ()));
        let thrown = PyKeyError::new_err("through");
        let thrown_value = thrown.value(py).clone();
        let err = finished_with(py, fiber.resume(py, Resume::Throw(thrown))).unwrap_err();
        assert!(err.value(py).is(&thrown_value));
    });
}

#[test]
fn a_fiber_has_its_own_frames_and_handled_exception() {
    with_python(|py| {
        let resumer_frame_is_bare = || -> bool {
            py.eval(c"__import__('sys')._getframe().f_back is None", None, None)
                .unwrap()
                .extract()
                .unwrap()
        };
        let exc_info = || {
            py.eval(c"repr(__import__('sys').exc_info()[1])", None, None)
                .unwrap()
                .to_string()
        };

        let mut fiber = fiber_calling(py, Kind::AsyncDef, "where_am_i", &[]);
        suspended_with(py, resume_value(py, &mut fiber, ()));
        // The suspended fiber's frames are its own, not the resumer's.
        assert!(resumer_frame_is_bare());
        let frame = fiber
            .top_frame(py)
            .unwrap()
            .expect("a suspended fiber's frame");
        let name = frame.getattr("f_code").unwrap().getattr("co_name").unwrap();
        assert_eq!(name.to_string(), "where_am_i");
        assert_eq!(
            finished_with(py, resume_value(py, &mut fiber, ())).unwrap(),
            "(True, 'where_am_i')"
        );
        assert!(fiber.top_frame(py).unwrap().is_none());

        let mut fiber = fiber_calling(py, Kind::AsyncDef, "handles_while_suspended", &[]);
        let inside = suspended_with(py, resume_value(py, &mut fiber, ()));
        assert_eq!(inside, "\"KeyError('in the fiber')\"");
        assert_eq!(
            exc_info(),
            "None",
            "the fiber's handled exception leaked out"
        );
        assert_eq!(
            finished_with(py, resume_value(py, &mut fiber, ())).unwrap(),
            "\"KeyError('in the fiber')\""
        );
    });
}

#[test]
fn a_panic_on_the_fiber_comes_back_as_an_exception() {
    with_python(|py| {
        let panics = PyCFunction::new_closure(
            py,
            None,
            None,
            |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<()> {
                panic!("deliberate")
            },
        )
        .unwrap();
        let function = helpers(py).getattr("calls_native").unwrap().unbind();
        let args = PyTuple::new(py, [panics]).unwrap().unbind();
        let mut fiber = Fiber::calling(py, Kind::AsyncDef, function, args, None).unwrap();
        let err = finished_with(py, resume_value(py, &mut fiber, ())).unwrap_err();
        assert!(err.is_instance_of::<pyo3::panic::PanicException>(py));
        assert!(err.value(py).to_string().contains("deliberate"));
    });
}

#[test]
fn a_finished_fibers_stack_serves_the_next_fiber() {
    with_python(|py| {
        let run = || {
            let mut fiber = fiber_calling(py, Kind::AsyncDef, "lets_it_through", &[]);
            suspended_with(py, resume_value(py, &mut fiber, ()));
            let at = SUSPENDED_AT.load(Ordering::Relaxed);
            finished_with(py, resume_value(py, &mut fiber, ())).unwrap();
            at
        };
        let first = run();
        let second = run();
        assert_eq!(first, second, "the same slot, at the same depth");
        // A fiber dropped before it starts gives its slot back too.
        drop(fiber_calling(py, Kind::AsyncDef, "lets_it_through", &[]));
        assert_eq!(run(), first);
    });
}

/// Moves a value to another thread that the type system does not let go.
struct AssertSend<T>(T);

// SAFETY: used only to hand a suspended fiber to another thread, which drops it while this
// one waits detached: the GIL orders every access, and dropping a suspended fiber away from
// its thread state is what the owner's orphan queue exists for.
unsafe impl<T> Send for AssertSend<T> {}

impl<T> AssertSend<T> {
    fn into_inner(self) -> T {
        self.0
    }
}

#[test]
fn a_suspended_fiber_dropped_under_another_thread_state_is_finished_by_its_owner() {
    for (kind, exit) in [
        (Kind::AsyncDef, "GeneratorExit"),
        (Kind::Greenlet, "GreenletExit"),
    ] {
        with_python(|py| {
            let record = PyList::empty(py);
            let mut fiber = fiber_calling(py, kind, "cleans_up", &[record.clone().into_any()]);
            assert_eq!(
                suspended_with(py, resume_value(py, &mut fiber, ())),
                "'first'"
            );
            let owner = fiber.owner.clone_ref(py);
            let fiber = AssertSend(fiber);
            py.detach(|| {
                in_fresh_thread(|| Python::attach(|_| drop(fiber.into_inner())));
            });
            assert!(owner.get().has_orphans(), "queued for its owner");
            assert_eq!(record.len(), 0, "not finished elsewhere");
            // The owner finishes it the next time its thread state starts a fiber.
            let next = fiber_calling(py, Kind::AsyncDef, "two_steps", &[int(py, 0)]);
            assert!(!owner.get().has_orphans());
            assert_eq!(record.to_string(), format!("['{exit}', 'finally']"));
            drop(next);
        });
    }
}

#[test]
fn an_abandoned_fiber_closes_what_it_waited_on_before_finishing() {
    with_python(|py| {
        let record = PyList::empty(py);
        let helpers = helpers(py);
        let waiter = helpers
            .getattr("waiter")
            .unwrap()
            .call1((&record,))
            .unwrap();
        waiter.call_method0("__next__").unwrap();
        let mut fiber = fiber_calling(
            py,
            Kind::AsyncDef,
            "cleans_up",
            &[record.clone().into_any()],
        );
        suspended_with(py, resume_value(py, &mut fiber, ()));
        let owner = fiber.owner.clone_ref(py);
        fiber.abandon(Some(waiter.unbind()));
        assert!(owner.get().has_orphans());
        FiberOwner::finish_orphans(&owner, py);
        assert_eq!(
            record.to_string(),
            "['awaitable closed', 'GeneratorExit', 'finally']"
        );
        assert!(!owner.get().has_orphans());
    });
}

#[test]
fn a_suspended_fiber_whose_thread_state_is_gone_is_retired_not_resumed_and_its_slot_reused() {
    let _serial = serial();
    start_python();
    in_fresh_thread(|| {
        // Under a first thread state, deleted when `attach` returns.
        let (fiber, record, at) = Python::attach(|py| {
            let record = PyList::empty(py);
            let mut fiber = fiber_calling(
                py,
                Kind::AsyncDef,
                "cleans_up",
                &[record.clone().into_any()],
            );
            suspended_with(py, resume_value(py, &mut fiber, ()));
            let at = SUSPENDED_AT.load(Ordering::Relaxed);
            (fiber, record.unbind(), at)
        });
        // Then under a second one, made as a C callback on a native thread makes it. (Not
        // with `Python::attach`: PyO3 counts the call the fiber is suspended in as attaching
        // this thread, and would take the deleted thread state for still current.)
        // SAFETY: the interpreter is running and this thread has no thread state.
        let gil = unsafe { pyo3::ffi::PyGILState_Ensure() };
        {
            // SAFETY: attached just above, until the release below.
            let py = unsafe { Python::assume_attached() };
            assert_ne!(fiber.thread(), current_thread(), "a new thread state");
            assert!(!fiber.can_be_finished_here(py));
            let owner = fiber.owner.clone_ref(py);
            drop(fiber);
            // Retired at once: its owner, gone, could never finish it.
            assert!(!owner.get().has_orphans());
            assert_eq!(record.bind(py).len(), 0, "nothing ran on the retired fiber");
            // No frame object or generator points into its frames, so its slot goes back to
            // the pool (the thread's cache is last in, first out): the next fiber gets it.
            let mut reused = false;
            let fibers: Vec<Fiber> = (0..4)
                .map(|_| {
                    let mut fiber = fiber_calling(py, Kind::AsyncDef, "lets_it_through", &[]);
                    suspended_with(py, resume_value(py, &mut fiber, ()));
                    let distance = SUSPENDED_AT.load(Ordering::Relaxed).abs_diff(at);
                    reused |= distance < STACK_SIZE / 2;
                    fiber
                })
                .collect();
            assert!(reused, "the retired fiber's slot was not reused");
            for mut fiber in fibers {
                finished_with(py, resume_value(py, &mut fiber, ())).unwrap();
            }
            drop(record);
        }
        // SAFETY: pairs the ensure above, on the same thread, with nothing of it left.
        unsafe { pyo3::ffi::PyGILState_Release(gil) };
    });
}

#[test]
fn a_fiber_runs_in_the_context_of_whoever_first_resumes_it() {
    with_python(|py| {
        let contextvars = py.import("contextvars").unwrap();
        let var = contextvars
            .getattr("ContextVar")
            .unwrap()
            .call1(("var",))
            .unwrap();
        let context = contextvars.getattr("Context").unwrap().call0().unwrap();
        let previous = crate::pystate::current_context(py);
        // SAFETY: a contextvars.Context.
        unsafe { crate::pystate::set_current_context(&context) };

        let mut fiber = fiber_calling(
            py,
            Kind::AsyncDef,
            "shares_context",
            std::slice::from_ref(&var),
        );
        assert!(fiber.context(py).is_none(), "chosen when it starts");
        suspended_with(py, resume_value(py, &mut fiber, ()));
        // The same Context object, not a copy: each side sees the other's changes.
        assert!(fiber.context(py).is(&context));
        assert_eq!(
            var.call_method0("get").unwrap().to_string(),
            "set on the fiber"
        );
        var.call_method1("set", ("set by the resumer",)).unwrap();
        let step = resume_value(py, &mut fiber, ());
        assert_eq!(finished_with(py, step).unwrap(), "'set by the resumer'");

        // SAFETY: what was current before: a Context or None.
        unsafe { crate::pystate::set_current_context(&previous) };
    });
}

/// Set in the child process of [`a_fiber_that_overflows_into_its_canary_aborts_at_its_next_switch`].
const OVERFLOW_CHILD: &str = "AWAITLET_TEST_OVERFLOW_CHILD";

/// Where the overflowing native function stops descending.
static DESCEND_BELOW: AtomicUsize = AtomicUsize::new(0);

/// Recurses with 1 KiB frames full of nonzero bytes until one lies below `stop_below`.
fn descend(stop_below: usize, depth: usize) -> usize {
    let mut frame = [0xa5u8; 1024];
    std::hint::black_box(&mut frame);
    let reached = if (frame.as_ptr() as usize) < stop_below {
        depth
    } else {
        descend(stop_below, depth + 1)
    };
    // Uses the frame after the call, so that the recursion is not a tail call.
    reached + usize::from(std::hint::black_box(frame[0]) == 0)
}

#[test]
fn a_fiber_that_overflows_into_its_canary_aborts_at_its_next_switch() {
    use std::os::unix::process::ExitStatusExt;

    let name = "a_fiber_that_overflows_into_its_canary_aborts_at_its_next_switch";
    if std::env::var_os(OVERFLOW_CHILD).is_some() {
        // In the child, whose slots have no guard: a native function called on the fiber
        // writes through the canary and returns; the switch back must abort.
        with_python(|py| {
            let overflow = PyCFunction::new_closure(
                py,
                None,
                None,
                |_: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<usize> {
                    Ok(descend(DESCEND_BELOW.load(Ordering::Relaxed), 0))
                },
            )
            .unwrap();
            let function = helpers(py).getattr("calls_native").unwrap().unbind();
            let args = PyTuple::new(py, [overflow]).unwrap().unbind();
            let mut fiber = Fiber::calling(py, Kind::AsyncDef, function, args, None).unwrap();
            let canary = stack_pool::tests::canary_address(fiber.canary)
                .expect("an unguarded slot has a canary");
            DESCEND_BELOW.store(canary, Ordering::Relaxed);
            let _ = fiber.resume(py, Resume::Value(py.None()));
            eprintln!("resume returned after the overflow");
        });
        return;
    }
    let test = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test, "--nocapture", "--test-threads=1"])
        .env(OVERFLOW_CHILD, "1")
        .env("AWAITLET_STACK_GUARDS", "none")
        .output()
        .expect("run the test binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(
        stderr.contains("Fatal error in awaitlet: a fiber overflowed its 8 MiB stack"),
        "{stderr}"
    );
    assert!(!stderr.contains("resume returned"), "{stderr}");
}
