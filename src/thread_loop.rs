//! The native part of `await_()` with no event loop running (python/awaitlet/_thread_loop.py):
//! the first step of an awaitable on the thread's own loop, run on the caller's stack as
//! `Task.__step` runs a step of its task, but without the StopIteration that a finished
//! `send()` raises in Python. Most awaitables handed over finish in that step.

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// asyncio's functions for what a task's step does around its coroutine (C versions where
/// CPython has them, as `asyncio.events` and `asyncio.tasks` choose).
struct StepHooks {
    set_running_loop: Py<PyAny>,
    enter_task: Py<PyAny>,
    leave_task: Py<PyAny>,
}

fn step_hooks(py: Python<'_>) -> PyResult<&StepHooks> {
    static HOOKS: PyOnceLock<StepHooks> = PyOnceLock::new();
    HOOKS.get_or_try_init(py, || {
        let events = py.import("asyncio.events")?;
        let tasks = py.import("asyncio.tasks")?;
        Ok(StepHooks {
            set_running_loop: events.getattr("_set_running_loop")?.unbind(),
            enter_task: tasks.getattr("_enter_task")?.unbind(),
            leave_task: tasks.getattr("_leave_task")?.unbind(),
        })
    })
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
    #[pyo3(from_py_with = loop_not_running)] event_loop: Bound<'py, PyAny>,
    task: Bound<'py, PyAny>,
    coroutine: Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let hooks = step_hooks(py)?;
    // SAFETY: GIL held; returns a new reference, or NULL with an exception set.
    let context = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }?;
    hooks.set_running_loop.call1(py, (&event_loop,))?;
    let stepped = hooks
        .enter_task
        .call1(py, (&event_loop, &task))
        .and_then(|_| {
            let sent = send_in_context(&coroutine, &context);
            let left = hooks.leave_task.call1(py, (&event_loop, &task)).map(drop);
            first_error(sent, left)
        });
    let cleared = hooks.set_running_loop.call1(py, (py.None(),)).map(drop);
    match first_error(stepped, cleared)? {
        Sent::Returned(value) => Ok((value, None)),
        Sent::Yielded(yielded) => Ok((yielded, Some(context))),
    }
}

/// The loop argument of [`first_step`], refused if a loop already runs in the thread: the
/// step would replace it as the running loop, then clear it.
fn loop_not_running<'py>(event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let get_running_loop = GET_RUNNING_LOOP.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("asyncio.events")?
                .getattr("_get_running_loop")?
                .unbind(),
        )
    })?;
    if !get_running_loop.call0(py)?.is_none(py) {
        return Err(PyRuntimeError::new_err(
            "_first_step() needs a thread with no event loop running",
        ));
    }
    Ok(event_loop.clone())
}
