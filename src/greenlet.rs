//! The native half of the greenlet facade (`awaitlet.greenlet`).
//!
//! [`FiberHandle`] is the base class of the facade's `greenlet` class: a fiber driven by
//! greenlet-style calls, where a greenlet only switches with its parent (the greenlet that
//! created and resumed it), which is all SQLAlchemy's and awaitlet's greenlet code needs.
//! The Python class adds greenlet's API and checks on top of these primitives.

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};
use pyo3::{create_exception, ffi};

use crate::coroutine::switch_to_resumer;
use crate::exceptions::GreenletError;
use crate::fiber::{call_body, current_thread, ActiveFiber, Fiber, Kind, Resume, Step};
use crate::gil_cell::GilCell;
use crate::pystate::{current_context, interpreter_finalizing, set_current_context};

create_exception!(
    greenlet,
    GreenletExit,
    PyBaseException,
    "Raised in a greenlet to kill it; a greenlet that does not catch it dies quietly."
);

/// A fiber driven by greenlet-style switches; the base class of the facade's `greenlet`.
#[pyclass(
    module = "awaitlet._awaitlet",
    name = "fiber",
    subclass,
    dict,
    weakref,
    frozen
)]
pub struct FiberHandle {
    fiber: GilCell<FiberSlot>,
}

enum FiberSlot {
    NotStarted,
    Started(Fiber),
    /// Finished, or killed before it started.
    Dead,
}

impl FiberHandle {
    fn slot(&self) -> PyResult<std::cell::RefMut<'_, FiberSlot>> {
        self.fiber
            .try_borrow_mut()
            .ok_or_else(|| GreenletError::new_err("greenlet is already running"))
    }

    /// Resumes the started fiber in `slot`; marks it dead when it finishes.
    fn step(py: Python<'_>, slot: &mut FiberSlot, input: Resume) -> PyResult<Py<PyAny>> {
        let FiberSlot::Started(fiber) = slot else {
            return Err(GreenletError::new_err("greenlet is not suspended"));
        };
        match fiber.resume(py, input) {
            Step::Suspended(value) => Ok(value),
            Step::Finished(result) => {
                *slot = FiberSlot::Dead;
                result
            }
        }
    }

    fn resume(slf: &Bound<'_, Self>, input: Resume) -> PyResult<Py<PyAny>> {
        let mut slot = slf.get().slot()?;
        if let FiberSlot::Started(fiber) = &*slot {
            if fiber.thread() != current_thread() {
                return Err(GreenletError::new_err(
                    "cannot switch to a different thread",
                ));
            }
            if !fiber.is_suspended() {
                return Err(GreenletError::new_err("greenlet is not suspended"));
            }
        }
        Self::step(slf.py(), &mut slot, input)
    }
}

#[pymethods]
impl FiberHandle {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            fiber: GilCell::new(FiberSlot::NotStarted),
        }
    }

    /// Starts `run(*args, **kwargs)` on a new fiber, in `context` (None: the caller's);
    /// returns what it first switches to its parent, or its result.
    #[pyo3(signature = (run, args, kwargs, context))]
    fn _start(
        slf: &Bound<'_, Self>,
        run: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
        context: Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        check_context(&context)?;
        let mut slot = slf.get().slot()?;
        if !matches!(*slot, FiberSlot::NotStarted) {
            return Err(GreenletError::new_err("greenlet has already started"));
        }
        let fiber = Fiber::new(py, Kind::Greenlet, call_body(run, args, kwargs))?;
        fiber.set_owner_greenlet(slf.as_ptr());
        // SAFETY: checked to be a Context or None above.
        unsafe { fiber.set_context(&context) }?;
        *slot = FiberSlot::Started(fiber);
        Self::step(py, &mut slot, Resume::Value(py.None()))
    }

    /// Resumes the suspended fiber: its switch to the parent returns `value`.
    fn _send(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        Self::resume(slf, Resume::Value(value))
    }

    /// Resumes the suspended fiber: its switch to the parent raises `exception`.
    fn _throw(slf: &Bound<'_, Self>, exception: Bound<'_, PyBaseException>) -> PyResult<Py<PyAny>> {
        Self::resume(slf, Resume::Throw(PyErr::from_value(exception.into_any())))
    }

    /// Marks a greenlet that never started as dead.
    fn _kill_unstarted(&self) -> PyResult<()> {
        let mut slot = self.slot()?;
        if matches!(*slot, FiberSlot::NotStarted) {
            *slot = FiberSlot::Dead;
        }
        Ok(())
    }

    #[getter]
    fn _started(&self) -> bool {
        !matches!(
            self.fiber.try_borrow().as_deref(),
            Some(FiberSlot::NotStarted)
        )
    }

    #[getter]
    fn _dead(&self) -> bool {
        matches!(self.fiber.try_borrow().as_deref(), Some(FiberSlot::Dead))
    }

    #[getter]
    fn _suspended(&self) -> bool {
        matches!(self.fiber.try_borrow().as_deref(), Some(FiberSlot::Started(fiber)) if fiber.is_suspended())
    }

    /// The context of the suspended fiber.
    #[getter]
    fn _context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.fiber.try_borrow().as_deref() {
            Some(FiberSlot::Started(fiber)) if fiber.is_suspended() => Ok(fiber.context(py)),
            _ => Err(GreenletError::new_err("the greenlet is not suspended")),
        }
    }

    #[setter(_context)]
    fn set_context(&self, context: Bound<'_, PyAny>) -> PyResult<()> {
        check_context(&context)?;
        match self.fiber.try_borrow().as_deref() {
            Some(FiberSlot::Started(fiber))
                if fiber.is_suspended() && fiber.thread() == current_thread() =>
            {
                // SAFETY: checked to be a Context or None above.
                unsafe { fiber.set_context(&context) }
            }
            _ => Err(GreenletError::new_err(
                "the greenlet is not suspended on this thread",
            )),
        }
    }

    /// The innermost frame of the suspended fiber.
    #[getter]
    fn _frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.fiber.try_borrow().as_deref() {
            Some(FiberSlot::Started(fiber)) => fiber.top_frame(py),
            _ => Ok(None),
        }
    }
}

impl Drop for FiberHandle {
    fn drop(&mut self) {
        // SAFETY: pyclass values are dropped from tp_dealloc, with the GIL held.
        let py = unsafe { Python::assume_attached() };
        let FiberSlot::Started(fiber) = self.fiber.get_mut() else {
            return;
        };
        // The pointer to this object must not outlive it, whatever happens to the fiber.
        fiber.set_owner_greenlet(std::ptr::null_mut());
        if !fiber.is_suspended() || fiber.thread() != current_thread() || interpreter_finalizing(py)
        {
            // Fiber's Drop leaks a fiber that cannot be finished here.
            return;
        }
        // Like greenlet: a suspended greenlet that is garbage collected is killed with
        // GreenletExit, so its `finally` blocks run.
        let pending = PyErr::take(py);
        fiber.set_closing();
        if let Step::Finished(Err(err)) = fiber.resume(py, Resume::Throw(GreenletExit::new_err(())))
        {
            if !err.is_instance_of::<GreenletExit>(py) {
                err.write_unraisable(py, None);
            }
        }
        if let Some(pending) = pending {
            pending.restore(py);
        }
    }
}

fn check_context(context: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: GIL held, valid object.
    if context.is_none() || unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } != 0 {
        Ok(())
    } else {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "greenlet context must be a contextvars.Context or None",
        ))
    }
}

fn active_fiber_at(level: usize) -> Option<ActiveFiber> {
    let mut fiber = ActiveFiber::running()?;
    for _ in 0..level {
        fiber = fiber.resumer()?;
    }
    Some(fiber)
}

/// The greenlet standing for the fiber `level` steps down the active chain (0: the running
/// one; 1: its resumer; ...), None if it has none yet, or False when that level is the
/// thread's own stack (no exception: this is on every switch's path).
#[pyfunction]
pub fn _fiber_greenlet(py: Python<'_>, level: usize) -> Bound<'_, PyAny> {
    match active_fiber_at(level) {
        None => PyBool::new(py, false).to_owned().into_any(),
        Some(fiber) => fiber
            .greenlet(py)
            .unwrap_or_else(|| py.None().into_bound(py)),
    }
}

/// Makes `greenlet` stand for the fiber `level` steps down the active chain.
#[pyfunction]
pub fn _adopt_greenlet(level: usize, greenlet: Py<PyAny>) -> PyResult<()> {
    let fiber =
        active_fiber_at(level).ok_or_else(|| pyo3::exceptions::PyLookupError::new_err(level))?;
    fiber.adopt_greenlet(greenlet)
}

/// Switches from the running fiber to its parent, handing over `value`.
#[pyfunction]
pub fn _switch_to_parent(py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let fiber = ActiveFiber::running()
        .ok_or_else(|| GreenletError::new_err("the main greenlet has no parent to switch to"))?;
    switch_to_resumer(py, fiber, value)
}

/// The running code's current context (greenlet's `gr_context` of the running greenlet).
#[pyfunction]
pub fn _current_context(py: Python<'_>) -> Bound<'_, PyAny> {
    current_context(py)
}

/// Replaces the running code's current context.
#[pyfunction]
pub fn _set_current_context(context: Bound<'_, PyAny>) -> PyResult<()> {
    check_context(&context)?;
    // SAFETY: checked to be a Context or None above.
    unsafe { set_current_context(&context) };
    Ok(())
}
