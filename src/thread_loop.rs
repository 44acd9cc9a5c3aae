//! The native part of `await_()` with no event loop running (python/awaitlet/_thread_loop.py):
//! the first step of an awaitable on the thread's own loop, run on the caller's stack as
//! `Task.__step` runs a step of its task, but without the StopIteration that a finished
//! `send()` raises in Python. Most awaitables handed over finish in that step.
//!
//! [`wait_for`] is `awaitlet.decorators._wait_for`, whole: the common case (a coroutine, no
//! fiber, no loop running, the thread's bridge task idle) runs here with no Python frame in
//! between; every other case goes to the Python functions that handle it.

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::coroutine::in_async_def;

mod asyncio_state;

use asyncio_state::{enter_task, leave_task, step_hooks, RunningLoop, StepHooks};

/// `callable(*args)`, through vectorcall (no argument tuple).
fn call<'py>(
    py: Python<'py>,
    callable: &Py<PyAny>,
    args: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    // Slot 0 is free scratch space for the callee (PY_VECTORCALL_ARGUMENTS_OFFSET).
    let mut vector = [std::ptr::null_mut(); 4];
    assert!(args.len() < vector.len());
    for (slot, arg) in vector[1..].iter_mut().zip(args) {
        *slot = arg.as_ptr();
    }
    // SAFETY: GIL held; `callable` and every argument are alive for the call (borrowed from
    // references the caller holds); `vector[1..=args.len()]` holds the arguments and slot 0
    // may be written by the callee, as PY_VECTORCALL_ARGUMENTS_OFFSET allows; returns a new
    // reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(
                callable.as_ptr(),
                vector.as_ptr().add(1),
                args.len() | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                std::ptr::null_mut(),
            ),
        )
    }
}

/// Keeps the first error of a sequence of steps that must all run.
fn first_error<T>(earlier: PyResult<T>, later: PyResult<()>) -> PyResult<T> {
    match (earlier, later) {
        (Err(err), _) => Err(err),
        (Ok(_), Err(err)) => Err(err),
        (Ok(value), Ok(())) => Ok(value),
    }
}

/// What one `send(None)` into a coroutine came to.
enum Sent<'py> {
    Returned(Bound<'py, PyAny>),
    Yielded(Bound<'py, PyAny>),
}

/// Sends None into `coroutine` with `context` entered (as `context.run(coroutine.send, None)`
/// does).
fn send_in_context<'py>(
    coroutine: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
) -> PyResult<Sent<'py>> {
    let py = coroutine.py();
    // SAFETY: GIL held; `context` is a contextvars.Context (made by PyContext_CopyCurrent),
    // so PyContext_Enter may only fail by raising (it is already entered: it is not, being
    // new), which it reports with -1 and an exception set.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held; both objects are alive for the call (borrowed from bound references);
    // PyIter_Send stores a new reference in `result` unless it reports an error.
    let status = unsafe { ffi::PyIter_Send(coroutine.as_ptr(), ffi::Py_None(), &mut result) };
    let sent = match status {
        ffi::PySendResult::PYGEN_RETURN | ffi::PySendResult::PYGEN_NEXT => {
            // SAFETY: on PYGEN_RETURN and PYGEN_NEXT `result` is a new, non-NULL reference.
            let value = unsafe { Bound::from_owned_ptr(py, result) };
            Ok(if status == ffi::PySendResult::PYGEN_RETURN {
                Sent::Returned(value)
            } else {
                Sent::Yielded(value)
            })
        }
        ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
    };
    // SAFETY: GIL held; `context` is the context entered above, and the coroutine's step has
    // left it entered (a coroutine cannot exit a context it did not enter).
    let exited = if unsafe { ffi::PyContext_Exit(context.as_ptr()) } < 0 {
        Err(PyErr::fetch(py))
    } else {
        Ok(())
    };
    first_error(sent, exited)
}

/// The first step of `coroutine` as `task` of `event_loop`, run as `Task.__step` runs a step:
/// `event_loop` set as the running loop (by `running`, which found none running), `task` as
/// the current task, in a copy of the caller's context (returned with what the step came to,
/// for a coroutine that yielded: the rest of it runs in that context).
fn step_as_task<'py>(
    py: Python<'py>,
    hooks: &StepHooks,
    running: RunningLoop<'py>,
    event_loop: &Bound<'py, PyAny>,
    task: &Bound<'py, PyAny>,
    coroutine: &Bound<'py, PyAny>,
) -> PyResult<(Sent<'py>, Bound<'py, PyAny>)> {
    // SAFETY: GIL held; returns a new reference, or NULL with an exception set.
    let context = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }?;
    running.set(hooks, event_loop)?;
    let stepped = enter_task(hooks, event_loop, task).and_then(|()| {
        let sent = send_in_context(coroutine, &context);
        let left = leave_task(hooks, event_loop, task);
        first_error(sent, left)
    });
    let cleared = running.clear(hooks, event_loop);
    Ok((first_error(stepped, cleared)?, context))
}

/// `_first_step(loop, task, coroutine)`: runs the first step of `coroutine` with `loop` as the
/// running loop, `task` as the current task and a copy of the caller's context entered, then
/// clears the running loop and the current task again.
///
/// Returns `(value, None)` if the coroutine returned `value`, `(yielded, context)` if it
/// yielded `yielded` (it waits: the caller runs the loop to finish it in `context`); what
/// the coroutine raised is raised. No loop may be running in the thread.
#[pyfunction]
#[pyo3(name = "_first_step", text_signature = "(loop, task, coroutine, /)")]
pub fn first_step<'py>(
    py: Python<'py>,
    event_loop: Bound<'py, PyAny>,
    task: Bound<'py, PyAny>,
    coroutine: Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let hooks = step_hooks(py)?;
    let Some(running) = RunningLoop::none_running(hooks, &event_loop)? else {
        return Err(PyRuntimeError::new_err(
            "_first_step() needs a thread with no event loop running",
        ));
    };
    match step_as_task(py, hooks, running, &event_loop, &task, &coroutine)? {
        (Sent::Returned(value), _) => Ok((value, None)),
        (Sent::Yielded(yielded), context) => Ok((yielded, Some(context))),
    }
}

/// The state of a thread's bridge task that the native path reads: the base class of
/// `_thread_loop._Bridge`, which sets it.
#[pyclass(subclass, module = "awaitlet._awaitlet", name = "_BridgeState")]
pub struct BridgeState {
    /// The thread's own loop.
    #[pyo3(get, set, name = "loop")]
    event_loop: Option<Py<PyAny>>,
    /// The bridge task.
    #[pyo3(get, set)]
    task: Option<Py<PyAny>>,
    /// The loop's queue of callbacks ready to run, where it has one we know (a sized object).
    #[pyo3(get, set)]
    ready: Option<Py<PyAny>>,
    /// Whether the bridge task waits for work (it can be handed an awaitable).
    #[pyo3(get, set)]
    idle: bool,
}

#[pymethods]
impl BridgeState {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            event_loop: None,
            task: None,
            ready: None,
            idle: false,
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.task)?;
        visit.call(&self.ready)
    }

    fn __clear__(&mut self) {
        self.event_loop = None;
        self.task = None;
        self.ready = None;
    }
}

/// The key of the thread's bridge (a weak reference to it) in the thread state's dict.
fn bridge_key(py: Python<'_>) -> &Bound<'_, pyo3::types::PyString> {
    pyo3::intern!(py, "awaitlet._thread_loop bridge")
}

/// The thread state's dict (`PyThreadState_GetDict()`), if it has one.
fn thread_dict(py: Python<'_>) -> Option<Borrowed<'_, '_, PyDict>> {
    // SAFETY: GIL held; returns a borrowed reference to the current thread state's dict
    // (owned by the thread state, alive while it is), or NULL with no exception set.
    let dict = unsafe { Borrowed::from_ptr_or_opt(py, ffi::PyThreadState_GetDict()) }?;
    // SAFETY: the thread state's dict is a dict.
    Some(unsafe { dict.cast_unchecked::<PyDict>() })
}

/// `_set_thread_bridge(bridge)`: makes `bridge` (a `_BridgeState`, or None) the thread's
/// bridge for [`wait_for`]; only a weak reference to it is kept (the thread's
/// `threading.local` owns it).
#[pyfunction]
#[pyo3(name = "_set_thread_bridge", text_signature = "(bridge, /)")]
pub fn set_thread_bridge(py: Python<'_>, bridge: Option<&Bound<'_, BridgeState>>) -> PyResult<()> {
    let Some(dict) = thread_dict(py) else {
        return Err(PyRuntimeError::new_err("this thread state has no dict"));
    };
    match bridge {
        Some(bridge) => dict.set_item(bridge_key(py), PyWeakrefReference::new(bridge)?),
        None => match dict.del_item(bridge_key(py)) {
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => Ok(()),
            other => other,
        },
    }
}

/// The thread's bridge, if one is set and alive.
fn thread_bridge(py: Python<'_>) -> PyResult<Option<Bound<'_, BridgeState>>> {
    let Some(dict) = thread_dict(py) else {
        return Ok(None);
    };
    let Some(reference) = dict.get_item(bridge_key(py))? else {
        return Ok(None);
    };
    let Ok(reference) = reference.cast::<PyWeakrefReference>() else {
        return Ok(None);
    };
    Ok(reference
        .upgrade()
        .and_then(|bridge| bridge.cast_into::<BridgeState>().ok()))
}

/// The Python functions [`wait_for`] hands the cases it does not handle itself to.
struct Fallbacks {
    /// `decorators._on_fiber(awaitable)`: `awaitlet(awaitable)`, called from a Python frame.
    on_fiber: Py<PyAny>,
    /// `decorators._off_fiber(awaitable)`: the rest of `_wait_for`.
    off_fiber: Py<PyAny>,
    /// `decorators._await_other(awaitable_or_fn)`: `await_()` of anything but a coroutine.
    other: Py<PyAny>,
}

fn fallbacks(py: Python<'_>) -> PyResult<&Fallbacks> {
    static FALLBACKS: PyOnceLock<Fallbacks> = PyOnceLock::new();
    FALLBACKS.get_or_try_init(py, || {
        let decorators = py.import("awaitlet.decorators")?;
        Ok(Fallbacks {
            on_fiber: decorators.getattr("_on_fiber")?.unbind(),
            off_fiber: decorators.getattr("_off_fiber")?.unbind(),
            other: decorators.getattr("_await_other")?.unbind(),
        })
    })
}

/// Whether Trio was imported (then a Trio run may be going on in the thread: the Python
/// path finds out).
fn trio_imported(py: Python<'_>) -> PyResult<bool> {
    // SAFETY: GIL held; returns a borrowed reference to the interpreter's module dict.
    let modules = unsafe { Borrowed::from_ptr(py, ffi::PyImport_GetModuleDict()) };
    modules
        .cast::<PyDict>()?
        .contains(pyo3::intern!(py, "trio"))
}

/// Wait for an awaitable from sync code and return its result, or decorate an async
/// function to be called from sync code.
///
/// ``await_(awaitable)`` suspends the fiber of the surrounding :func:`async_` (or
/// :func:`awaitlet.async_def`) while the event loop awaits the awaitable.  With no event
/// loop running in the thread, it runs the awaitable on an event loop of the thread's own
/// (made on first use, reused after; see :func:`close_thread_loop`).
///
/// ``@await_`` on an async function gives a sync function that calls it and waits, the
/// same way, for what it returns.
///
/// Raises:
///     AwaitInEventLoopError: called from sync code running directly in a running event
///         loop (neither below ``async_`` nor free to start a loop).
///     TypeError: the argument is neither awaitable nor callable.
///
/// Whatever the awaitable raises is raised here, with its traceback.
//
// `awaitlet.decorators.await_`, native so that its common case, a coroutine, costs no Python
// frame: it goes to [`wait_for`]; anything else to `decorators._await_other()`.
#[pyfunction]
#[pyo3(name = "await_", signature = (awaitable_or_fn, /))]
pub fn await_<'py>(
    py: Python<'py>,
    awaitable_or_fn: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: GIL held; `awaitable_or_fn` is a valid object.
    if unsafe { ffi::PyCoro_CheckExact(awaitable_or_fn.as_ptr()) } != 0 {
        return wait_for(py, awaitable_or_fn);
    }
    call(py, &fallbacks(py)?.other, &[awaitable_or_fn])
}

/// `_wait_for(awaitable)`: what `await_(awaitable)` does: with a fiber to suspend, waits on
/// it; with no loop running, runs `awaitable` on the thread's own loop; otherwise refuses.
///
/// Runs here, natively, a coroutine awaited with no fiber and no loop running while the
/// thread's bridge task is idle: its first step (as [`first_step`] runs it), then, if it
/// finished, one turn of the loop if it scheduled callbacks, or, if it waits, the bridge
/// task takes it over (`_Bridge.finish`).
#[pyfunction]
#[pyo3(name = "_wait_for", text_signature = "(awaitable, /)")]
pub fn wait_for<'py>(
    py: Python<'py>,
    awaitable: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let fallbacks = fallbacks(py)?;
    if in_async_def(py)? {
        return call(py, &fallbacks.on_fiber, &[awaitable]);
    }
    // SAFETY: GIL held; `awaitable` is a valid object.
    let is_coroutine = unsafe { ffi::PyCoro_CheckExact(awaitable.as_ptr()) } != 0;
    let bridge = if is_coroutine {
        thread_bridge(py)?
    } else {
        None
    };
    let Some(bridge) = bridge else {
        return call(py, &fallbacks.off_fiber, &[awaitable]);
    };
    let (event_loop, task, ready) = {
        let Ok(state) = bridge.try_borrow() else {
            return call(py, &fallbacks.off_fiber, &[awaitable]);
        };
        match (&state.event_loop, &state.task) {
            (Some(event_loop), Some(task)) if state.idle => (
                event_loop.bind(py).clone(),
                task.bind(py).clone(),
                state.ready.as_ref().map(|ready| ready.bind(py).clone()),
            ),
            _ => return call(py, &fallbacks.off_fiber, &[awaitable]),
        }
    };
    let hooks = step_hooks(py)?;
    if trio_imported(py)? {
        return call(py, &fallbacks.off_fiber, &[awaitable]);
    }
    let Some(running) = RunningLoop::none_running(hooks, &event_loop)? else {
        return call(py, &fallbacks.off_fiber, &[awaitable]);
    };
    let value = match step_as_task(py, hooks, running, &event_loop, &task, awaitable) {
        Ok((Sent::Yielded(yielded), context)) => {
            // It waits: the bridge task takes it over, and the loop runs until it is done.
            return bridge
                .as_any()
                .call_method1(pyo3::intern!(py, "finish"), (awaitable, yielded, context));
        }
        Ok((Sent::Returned(value), _)) => Ok(value),
        Err(err) => Err(err),
    };
    // It finished, returning or raising: callbacks it scheduled (tasks it created, ...) get
    // one turn of the loop before this returns, as `loop.run_until_complete()` gives them.
    let scheduled = match &ready {
        Some(ready) => ready.is_truthy(),
        None => Ok(true),
    };
    let turned = scheduled.and_then(|scheduled| {
        if scheduled {
            bridge
                .as_any()
                .call_method0(pyo3::intern!(py, "turn_for_scheduled_callbacks"))
                .map(drop)
        } else {
            Ok(())
        }
    });
    match (value, turned) {
        (value, Ok(())) => value,
        (Ok(_), Err(err)) => Err(err),
        (Err(earlier), Err(later)) => {
            // As a `finally` block that raises: the new exception, with the first as its
            // context.
            later.set_context(py, Some(earlier));
            Err(later)
        }
    }
}
