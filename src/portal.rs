//! The step loop of `awaitlet.portal`, natively.
//!
//! A task with a portal runs an `async_def()` coroutine whose sync function calls
//! [`portal_drive`] with the task's original coroutine: it sends each value the task resumes
//! it with into that coroutine (or throws each exception), and hands each value the coroutine
//! yields to the task by suspending the fiber on a [`Handoff`], an awaitable that yields that
//! value once and returns what the task sends back. `await_()` drives the coroutine it waits
//! for the same way, from the sync code below: every step of both runs on the portal's fiber.
//! Python code in `python/awaitlet/portal.py` does everything else.

use pyo3::exceptions::{PyGeneratorExit, PyRuntimeError, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{PyTraverseError, PyVisit};

use crate::coroutine::switch_to_resumer;
use crate::fiber::{ActiveFiber, ArgsEnd, Kind};

/// An awaitable that yields `value` once, then returns what it is sent (raising what is
/// thrown: it has no `throw`, so an exception thrown in is raised at the suspended call).
#[pyclass(module = "awaitlet._awaitlet", name = "_PortalHandoff")]
pub struct Handoff {
    value: Option<Py<PyAny>>,
}

#[pymethods]
impl Handoff {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The value to hand over, the first time; then the end (the task sent None).
    fn __next__(&mut self) -> Option<Py<PyAny>> {
        self.value.take()
    }

    /// What a loop that resumes with a value other than None calls (Trio).
    fn send(&mut self, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        match self.value.take() {
            Some(pending) => Ok(pending),
            None => Err(PyStopIteration::new_err((value,))),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)
    }

    fn __clear__(&mut self) {
        self.value = None;
    }
}

/// One step of the coroutine: what it yielded, or how it ended.
enum Step {
    Yielded(Py<PyAny>),
    Returned(Py<PyAny>),
}

/// `coro.send(value)`, through `PyIter_Send` (no StopIteration object when it returns).
fn send(py: Python<'_>, coro: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held; both objects are alive for the call; `result` receives a new
    // reference for PYGEN_NEXT and PYGEN_RETURN and stays NULL on error.
    let status = unsafe { ffi::PyIter_Send(coro.as_ptr(), value.as_ptr(), &mut result) };
    if status == ffi::PySendResult::PYGEN_ERROR {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PYGEN_NEXT and PYGEN_RETURN hand over a new reference in `result`.
    let result = unsafe { Bound::from_owned_ptr(py, result) }.unbind();
    Ok(if status == ffi::PySendResult::PYGEN_NEXT {
        Step::Yielded(result)
    } else {
        Step::Returned(result)
    })
}

/// `coro.throw(error)`.
fn throw(py: Python<'_>, coro: &Bound<'_, PyAny>, error: PyErr) -> PyResult<Step> {
    match coro.call_method1(pyo3::intern!(py, "throw"), (error.into_value(py),)) {
        Ok(yielded) => Ok(Step::Yielded(yielded.unbind())),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
            let value = err.value(py).getattr(pyo3::intern!(py, "value"))?;
            Ok(Step::Returned(value.unbind()))
        }
        Err(err) => Err(err),
    }
}

/// `_portal_drive(coro, value, exception, detach)`: run `coro` to its end from the fiber of
/// an `async_def()` coroutine, starting by sending `value` (or throwing `exception`), handing
/// each value it yields to the task that awaits that coroutine; return what `coro` returns
/// or raise what it raises. An exception the task throws in goes into `coro`, except an
/// instance of `detach` (raised at once, `coro` left as it is) and `GeneratorExit` (the
/// portal is being closed: `coro` is closed, then it is raised).
#[pyfunction]
#[pyo3(name = "_portal_drive")]
pub fn portal_drive(
    py: Python<'_>,
    coro: &Bound<'_, PyAny>,
    value: Bound<'_, PyAny>,
    exception: Option<Bound<'_, PyAny>>,
    detach: &Bound<'_, PyType>,
) -> PyResult<Py<PyAny>> {
    let mut value = value.unbind();
    let mut thrown = exception.map(PyErr::from_value);
    loop {
        let step = match thrown.take() {
            None => send(py, coro, value.bind(py))?,
            Some(error) => throw(py, coro, error)?,
        };
        let yielded = match step {
            Step::Yielded(yielded) => yielded,
            Step::Returned(result) => return Ok(result),
        };
        let fiber = match ActiveFiber::running() {
            Some(fiber) if fiber.kind() == Kind::AsyncDef => fiber,
            _ => {
                // Nothing was awaited, and the awaitable will not be resumed.
                coro.call_method0(pyo3::intern!(py, "close"))?;
                return Err(PyRuntimeError::new_err(
                    "awaitlet.portal.await_() cannot suspend here: it is called from a \
                     greenlet started below the task's portal",
                ));
            }
        };
        let handoff = Bound::new(
            py,
            Handoff {
                value: Some(yielded),
            },
        )?;
        match switch_to_resumer(py, fiber, handoff.as_any(), ArgsEnd::UNKNOWN) {
            Ok(sent) => value = sent,
            Err(err) if err.is_instance_of::<PyGeneratorExit>(py) => {
                // A no-op if the collector closed `coro` first.
                coro.call_method0(pyo3::intern!(py, "close"))?;
                return Err(err);
            }
            Err(err) if err.is_instance(py, detach) => return Err(err),
            Err(err) => thrown = Some(err),
        }
    }
}
