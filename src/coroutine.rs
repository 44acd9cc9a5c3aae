//! The coroutine object `async_def()` returns, and `awaitlet()`.
//!
//! `async_def(fn, ...)` returns an [`AsyncDefCoroutine`]. Its first `send(None)` starts `fn`
//! on a new fiber. When the sync code calls `awaitlet(x)`, the fiber suspends with `x`'s
//! awaitable iterator, and the coroutine delegates to that iterator exactly as `await` (or
//! `yield from`) does: whatever it yields goes to the caller of `send`, what is sent or
//! thrown in goes to it, and when it returns or raises, the value or exception is handed
//! back to the sync code at its `awaitlet()` call. Any loop that drives coroutines drives
//! these.

use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::{
    PyGeneratorExit, PyRuntimeError, PyRuntimeWarning, PyStopIteration, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple, PyType};
use pyo3::Borrowed;
use pyo3::PyTraverseError;
use pyo3::PyVisit;

use crate::exceptions::{NoAwaitOccurred, NoAwaitletContext};
use crate::fiber::{
    current_thread, panic_to_pyerr, ActiveFiber, ArgsEnd, Fiber, Kind, Resume, Step,
};
use crate::gil_cell::GilCell;
use crate::method_def::{add_static_function, MethodDef};
use crate::pystate::{coroutine_origin_tracking_depth, is_iterable_coroutine, optional_attr};

enum State {
    /// Not started: `fn` has not run.
    Created {
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    },
    Running(Running),
    /// Finished, closed, or cleared by the garbage collector.
    Done,
}

struct Running {
    fiber: Fiber,
    /// The awaitable iterator the suspended sync code waits on.
    awaiting: Option<Py<PyAny>>,
    /// Whether the sync code ever called `awaitlet()`.
    awaited: bool,
}

/// Which of the coroutine's names.
#[derive(Clone, Copy)]
enum NameKind {
    Name = 0,
    Qualname = 1,
}

/// What driving the coroutine one step produced.
enum Outcome {
    /// The awaited object yielded this to the event loop.
    Yielded(Py<PyAny>),
    /// The sync function returned this.
    Returned(Py<PyAny>),
}

/// The coroutine returned by `async_def()`.
#[pyclass(
    module = "awaitlet._awaitlet",
    name = "async_def_coroutine",
    frozen,
    weakref
)]
pub struct AsyncDefCoroutine {
    func: Py<PyAny>,
    assert_await_occurs: bool,
    state: GilCell<State>,
    /// `__name__` and `__qualname__` once assigned (until then, the function's).
    names: GilCell<[Option<Py<PyString>>; 2]>,
    /// `cr_origin`: where the coroutine was created, when origin tracking is on.
    origin: Option<Py<PyTuple>>,
}

impl AsyncDefCoroutine {
    pub fn new(
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
        assert_await_occurs: bool,
    ) -> Self {
        Self {
            func,
            assert_await_occurs,
            state: GilCell::new(State::Created { args, kwargs }),
            names: GilCell::new([None, None]),
            origin: None,
        }
    }

    fn borrow_mut(&self) -> PyResult<std::cell::RefMut<'_, State>> {
        self.state
            .try_borrow_mut()
            .ok_or_else(|| PyValueError::new_err("coroutine already executing"))
    }

    fn assigned_name<'py>(&self, py: Python<'py>, which: NameKind) -> Option<Bound<'py, PyString>> {
        let names = self.names.try_borrow()?;
        names[which as usize]
            .as_ref()
            .map(|name| name.bind(py).clone())
    }

    /// Assigns `__name__` or `__qualname__`, which must be strings, as on a coroutine.
    fn assign_name(&self, which: NameKind, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let attribute = match which {
            NameKind::Name => "__name__",
            NameKind::Qualname => "__qualname__",
        };
        let Some(value) = value.and_then(|value| value.cast::<PyString>().ok()) else {
            return Err(PyTypeError::new_err(format!(
                "{attribute} must be set to a string object"
            )));
        };
        // SAFETY: GIL held (the Bound proves it), `value` is a str; returns a new reference
        // to an exact str (a copy of a subclass instance, which then cannot hold a reference
        // cycle through this object).
        let value = unsafe {
            Bound::from_owned_ptr_or_err(value.py(), ffi::PyUnicode_FromObject(value.as_ptr()))
        }?
        .cast_into::<PyString>()?;
        if let Some(mut names) = self.names.try_borrow_mut() {
            names[which as usize] = Some(value.unbind());
        }
        Ok(())
    }

    fn qualname(&self, py: Python<'_>) -> String {
        if let Some(name) = self.assigned_name(py, NameKind::Qualname) {
            return name.to_string_lossy().into_owned();
        }
        let func = self.func.bind(py);
        for attribute in ["__qualname__", "__name__"] {
            if let Ok(name) = func
                .getattr(attribute)
                .and_then(|name| name.extract::<String>())
            {
                return name;
            }
        }
        func.get_type()
            .name()
            .map(|name| name.to_string())
            .unwrap_or_else(|_| "async_def".to_owned())
    }

    /// The text of the "never awaited" warning, as `warnings._warn_unawaited_coroutine`
    /// words it: with where the coroutine was created, when that was recorded.
    fn never_awaited_message(&self, py: Python<'_>) -> String {
        let message = format!("coroutine '{}' was never awaited", self.qualname(py));
        let Some(origin) = &self.origin else {
            return message;
        };
        let created_at = || -> PyResult<String> {
            let linecache = py.import("linecache")?;
            let entries = pyo3::types::PyList::empty(py);
            for entry in origin.bind(py).iter().rev() {
                let (filename, line, function) =
                    entry.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
                let text = linecache.call_method1("getline", (&filename, &line))?;
                entries.append((filename, line, function, text))?;
            }
            let formatted = py
                .import("traceback")?
                .call_method1("format_list", (entries,))?;
            let mut text = String::from("\nCoroutine created at (most recent call last)\n");
            for entry in formatted.try_iter()? {
                text.push_str(&entry?.extract::<String>()?);
            }
            Ok(text)
        };
        match created_at() {
            Ok(text) => (message + &text).trim_end_matches('\n').to_owned(),
            Err(_) => message,
        }
    }

    /// Starts the fiber (first `send`).
    fn start(&self, py: Python<'_>, state: &mut State) -> PyResult<Outcome> {
        let State::Created { args, kwargs } = std::mem::replace(state, State::Done) else {
            unreachable!("start() on a started coroutine")
        };
        let func = self.func.clone_ref(py);
        let fiber = Fiber::calling(py, Kind::AsyncDef, func, args, kwargs)?;
        *state = State::Running(Running {
            fiber,
            awaiting: None,
            awaited: false,
        });
        self.drive(py, state, Resume::Value(py.None()))
    }

    /// Resumes the fiber with `input` and keeps delegating to what it awaits until something
    /// yields to the event loop or the sync function finishes.
    fn drive(&self, py: Python<'_>, state: &mut State, mut input: Resume) -> PyResult<Outcome> {
        let State::Running(running) = state else {
            unreachable!("drive() on a coroutine that is not running")
        };
        let result = loop {
            match running.fiber.resume(py, input) {
                Step::Suspended(awaitable) => {
                    running.awaited = true;
                    if let Some(yielded) = running.fiber.take_first_yield() {
                        running.awaiting = Some(awaitable);
                        return Ok(Outcome::Yielded(yielded));
                    }
                    input = match send_into(py, &awaitable, None) {
                        Delegated::Yielded(value) => {
                            running.awaiting = Some(awaitable);
                            return Ok(Outcome::Yielded(value));
                        }
                        Delegated::Returned(value) => Resume::Value(value),
                        Delegated::Raised(err) => Resume::Throw(err),
                    };
                }
                Step::Finished(result) => break result,
            }
        };
        let awaited = running.awaited;
        *state = State::Done;
        match result {
            Ok(value) if self.assert_await_occurs && !awaited => {
                drop(value);
                Err(NoAwaitOccurred::new_err(
                    "Function was run but no await was called.",
                ))
            }
            Ok(value) => Ok(Outcome::Returned(value)),
            Err(err) => Err(stop_iteration_to_runtime_error(py, err)),
        }
    }

    /// Checks that the caller may resume this running coroutine.
    fn check_thread(running: &Running) -> PyResult<()> {
        if running.fiber.thread() != current_thread() {
            return Err(PyRuntimeError::new_err(
                "cannot resume an async_def() coroutine from a thread state other than the one it started under",
            ));
        }
        Ok(())
    }

    fn send_impl(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<Outcome> {
        let mut state = self.borrow_mut()?;
        match &mut *state {
            State::Created { .. } => {
                if !value.is_none() {
                    return Err(PyTypeError::new_err(
                        "can't send non-None value to a just-started coroutine",
                    ));
                }
                self.start(py, &mut state)
            }
            State::Running(running) => {
                Self::check_thread(running)?;
                let input = match running.awaiting.take() {
                    Some(awaitable) => match send_into(py, &awaitable, Some(&value)) {
                        Delegated::Yielded(yielded) => {
                            running.awaiting = Some(awaitable);
                            return Ok(Outcome::Yielded(yielded));
                        }
                        Delegated::Returned(result) => Resume::Value(result),
                        Delegated::Raised(err) => Resume::Throw(err),
                    },
                    None => Resume::Value(value.unbind()),
                };
                self.drive(py, &mut state, input)
            }
            State::Done => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    }

    /// `throw()` with CPython's order of checks: a suspended coroutine hands the arguments
    /// as given to what it awaits (which checks them itself); they are checked here only
    /// when the exception is raised in the sync code, or the coroutine has finished.
    fn throw_impl(&self, py: Python<'_>, args: &ThrowArgs<'_>) -> PyResult<Outcome> {
        let Some(mut state) = self.state.try_borrow_mut() else {
            // Up to 3.14 a running coroutine checks the arguments before its state.
            if py.version_info() < (3, 15) {
                args.exception()?;
            }
            return Err(PyValueError::new_err("coroutine already executing"));
        };
        match &mut *state {
            State::Created { .. } => {
                // Like a coroutine that never started: it is closed and `fn` never runs.
                let exc = args.exception()?;
                *state = State::Done;
                // 3.10 and 3.11 raise it in the new frame, under PEP 479's guard.
                Err(if py.version_info() < (3, 12) {
                    stop_iteration_to_runtime_error(py, exc)
                } else {
                    exc
                })
            }
            State::Done => {
                // Up to 3.14 the arguments are checked before the coroutine's state.
                if py.version_info() < (3, 15) {
                    args.exception()?;
                }
                Err(PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ))
            }
            State::Running(running) => {
                Self::check_thread(running)?;
                let input = match running.awaiting.take() {
                    Some(awaitable) if args.is_generator_exit() => {
                        match close_iter(py, &awaitable) {
                            Ok(()) => Resume::Throw(args.exception()?),
                            Err(err) => Resume::Throw(err),
                        }
                    }
                    Some(awaitable) => match throw_into(py, &awaitable, args) {
                        None => match args.exception() {
                            // Since 3.12 the await of an iterator without throw() takes a
                            // StopIteration thrown at it as its result.
                            Ok(exc)
                                if py.version_info() >= (3, 12)
                                    && exc.is_instance_of::<PyStopIteration>(py) =>
                            {
                                match exc.value(py).getattr(pyo3::intern!(py, "value")) {
                                    Ok(value) => Resume::Value(value.unbind()),
                                    Err(err) => Resume::Throw(err),
                                }
                            }
                            Ok(exc) => Resume::Throw(exc),
                            Err(err) => {
                                // Nothing was raised anywhere: still suspended as before.
                                running.awaiting = Some(awaitable);
                                return Err(err);
                            }
                        },
                        Some(Delegated::Yielded(value)) => {
                            running.awaiting = Some(awaitable);
                            return Ok(Outcome::Yielded(value));
                        }
                        Some(Delegated::Returned(value)) => Resume::Value(value),
                        Some(Delegated::Raised(err)) => Resume::Throw(err),
                    },
                    None => Resume::Throw(args.exception()?),
                };
                self.drive(py, &mut state, input)
            }
        }
    }

    /// Finishes the coroutine when it is finalized: throws GeneratorExit into suspended sync
    /// code, whose later `awaitlet()` calls raise RuntimeError, so that it has to finish (a
    /// fiber left suspended could only be leaked).
    fn close_state(&self, py: Python<'_>, state: &mut State) -> PyResult<Py<PyAny>> {
        self.close_with(py, state, true)
    }

    /// `close()`: throws GeneratorExit into suspended sync code. Unless `force`, the sync
    /// code may still await (what completes at once, as a coroutine can); if it suspends
    /// again, close() raises RuntimeError and leaves it suspended there, as CPython does.
    fn close_with(&self, py: Python<'_>, state: &mut State, force: bool) -> PyResult<Py<PyAny>> {
        let running = match state {
            State::Created { .. } => {
                *state = State::Done;
                return Ok(py.None());
            }
            State::Done => return Ok(py.None()),
            State::Running(running) => running,
        };
        Self::check_thread(running)?;
        if force {
            running.fiber.set_closing();
        }
        let exc = match running.awaiting.take() {
            Some(awaitable) => close_iter(py, &awaitable)
                .err()
                .unwrap_or_else(|| PyGeneratorExit::new_err(())),
            None => PyGeneratorExit::new_err(()),
        };
        match self.drive(py, state, Resume::Throw(exc)) {
            Ok(Outcome::Returned(value)) => {
                // Since 3.13 close() returns the value a coroutine returned after
                // GeneratorExit.
                Ok(if py.version_info() >= (3, 13) {
                    value
                } else {
                    py.None()
                })
            }
            Ok(Outcome::Yielded(_)) => {
                Err(PyRuntimeError::new_err("coroutine ignored GeneratorExit"))
            }
            Err(err)
                if err.is_instance_of::<PyGeneratorExit>(py)
                    || err.is_instance_of::<PyStopIteration>(py) =>
            {
                Ok(py.None())
            }
            Err(err) => Err(err),
        }
    }
}

impl AsyncDefCoroutine {
    /// Closes sync code that is suspended in `state` and whose fiber this thread can finish,
    /// as a coroutine that is garbage is closed: its `finally` blocks run, an error is
    /// reported as unraisable, and the exception in flight, if any, survives.
    fn close_abandoned(&self, py: Python<'_>, state: &mut State) {
        match state {
            State::Running(running) if running.fiber.can_be_finished_here(py) => {}
            // A fiber suspended under another thread state, or at interpreter exit, cannot be
            // finished here (see Drop).
            _ => return,
        }
        let pending = PyErr::take(py);
        if let Err(err) = self.close_state(py, state) {
            let func = self.func.bind(py).clone();
            err.write_unraisable(py, Some(&func));
        }
        if let Some(pending) = pending {
            pending.restore(py);
        }
    }

    /// `tp_finalize` (PEP 442): the cycle collector calls it before it clears anything, so
    /// that suspended sync code in a garbage cycle is closed while everything it uses is still
    /// intact.
    fn finalize(&self, py: Python<'_>) {
        // Borrowed: the coroutine is running, so it is not garbage after all.
        if let Some(mut state) = self.state.try_borrow_mut() {
            self.close_abandoned(py, &mut state);
        }
    }
}

impl Drop for AsyncDefCoroutine {
    fn drop(&mut self) {
        // SAFETY: pyclass values are dropped from tp_dealloc, with the GIL held.
        let py = unsafe { Python::assume_attached() };
        let mut state = std::mem::replace(self.state.get_mut(), State::Done);
        if let State::Created { .. } = state {
            // Whatever exception is being raised while this object dies must survive it.
            let pending = PyErr::take(py);
            let message = CString::new(self.never_awaited_message(py)).unwrap_or_default();
            if let Err(err) = PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1) {
                let func = self.func.bind(py).clone();
                err.write_unraisable(py, Some(&func));
            }
            if let Some(pending) = pending {
                pending.restore(py);
            }
        } else if matches!(&state, State::Running(running) if !running.fiber.can_be_finished_here(py))
        {
            // A fiber suspended under another (maybe dead) thread state, or at interpreter
            // exit, cannot be finished here: its owner finishes it (closing what it awaits
            // first), or frees it once its thread state is gone.
            if let State::Running(running) = std::mem::replace(&mut state, State::Done) {
                running.fiber.abandon(running.awaiting);
            }
        } else {
            self.close_abandoned(py, &mut state);
        }
        *self.state.get_mut() = state;
    }
}

/// Makes the collector close garbage `async_def` coroutines with [`AsyncDefCoroutine`]'s
/// finalizer, and gives the type the `am_send` and `tp_iternext` slots below. PyO3 has no
/// `__del__` and no `am_send`, so the slots are set on the type object once it exists.
pub fn install_finalizer(py: Python<'_>) {
    let class = py.get_type::<AsyncDefCoroutine>();
    // SAFETY: the class was created by this module just now: no instance or subclass uses it
    // yet.
    unsafe { crate::set_finalizer(&class, finalize_coroutine) };
    install_am_send(&class);
}

/// Sets `tp_as_async->am_send`, which `PyIter_Send` prefers to `__next__`/`send`: asyncio's
/// Task steps its coroutine with `PyIter_Send` (and 3.10-3.11's evaluation loop delegates an
/// `await` with it), so each step of the event loop then calls [`am_send`] directly instead of
/// going through `tp_iternext`, and the coroutine's return value is handed back as
/// `PYGEN_RETURN` instead of being raised and caught as StopIteration. Also replaces
/// `tp_iternext` (PyO3's `__next__`) with [`iternext`], for 3.12+'s `await`.
fn install_am_send(class: &Bound<'_, PyType>) {
    let type_ptr = class.as_type_ptr();
    // SAFETY: GIL held (the Bound proves it). The class is a heap type created by this module
    // just now (PyType_FromSpec, through PyO3), not subclassable and immutable, with no instance
    // yet: nothing reads the slot concurrently. A heap type's `tp_as_async` points into the type
    // object itself (PyHeapTypeObject.as_async), which lives as long as the type; PyO3 gives
    // it `am_await` (from `__await__`), so it is there, but it is checked all the same.
    // `am_send` is part of PyAsyncMethods on every supported version (3.10+).
    unsafe {
        let as_async = (*type_ptr).tp_as_async;
        if as_async.is_null() {
            return;
        }
        (*as_async).am_send = Some(am_send);
        (*type_ptr).tp_iternext = Some(iternext);
        ffi::PyType_Modified(type_ptr);
    }
}

/// `tp_iternext`, which 3.12+'s evaluation loop calls to step an awaited object that is not a
/// generator (`await async_def(...)` in a coroutine): [`am_send`] with None; on return, NULL
/// without an exception set when the result is None (what `tp_iternext` means by "exhausted",
/// which every caller reads as a result of None, as for CPython's generators) instead of a
/// StopIteration object raised and caught, else StopIteration(result). `__next__` called by
/// name (the type's slot wrapper keeps PyO3's function) always raises StopIteration.
///
/// # Safety
/// Called by CPython with the GIL held, `iter` an instance of [`AsyncDefCoroutine`].
unsafe extern "C" fn iternext(iter: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let mut result = std::ptr::null_mut();
    // SAFETY: as for `am_send`, with None (immortal, or kept alive by the interpreter) as the
    // value and a local for the result.
    let status = unsafe { am_send(iter, ffi::Py_None(), &mut result) };
    match status {
        ffi::PySendResult::PYGEN_NEXT | ffi::PySendResult::PYGEN_ERROR => result,
        ffi::PySendResult::PYGEN_RETURN => {
            // SAFETY: GIL held; `result` is the new reference `am_send` handed back.
            unsafe {
                if result == ffi::Py_None() {
                    ffi::Py_DECREF(result);
                } else {
                    // StopIteration(result): a 1-tuple of arguments, so that a tuple or an
                    // exception result is its value, not its arguments.
                    let args = ffi::PyTuple_Pack(1, result);
                    ffi::Py_DECREF(result);
                    if !args.is_null() {
                        ffi::PyErr_SetObject(ffi::PyExc_StopIteration, args);
                        ffi::Py_DECREF(args);
                    }
                }
            }
            std::ptr::null_mut()
        }
    }
}

/// `am_send`: `PyIter_Send(coroutine, value, &result)` with the contract of CPython's own
/// `am_send` slots: `PYGEN_NEXT` with a new reference to what the coroutine yields in
/// `*result`, `PYGEN_RETURN` with a new reference to what it returned, or `PYGEN_ERROR` with
/// an exception set and `*result` NULL.
///
/// # Safety
/// Called by CPython with the GIL held, `iter` an instance of [`AsyncDefCoroutine`] (the
/// slot's type; it has no subclasses), `value` NULL or a valid object, `result` valid for a
/// write.
unsafe extern "C" fn am_send(
    iter: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: `result` is valid for a write (caller's contract); NULL unless a value is handed
    // back below.
    unsafe { *result = std::ptr::null_mut() };
    // PyO3's trampoline (the one of `__setattr__`'s slot, which has the same three pointers
    // and an int result) marks the thread attached for PyO3, turns an `Err` into a raised
    // exception and -1, and a panic into a PanicException.
    let trampoline =
        pyo3::impl_::trampoline::get_trampoline_function!(setattrofunc, am_send_in_trampoline);
    // SAFETY: called as CPython calls the slot, with the GIL held; the third pointer is
    // `result` (see `am_send_in_trampoline`).
    let status = unsafe { trampoline(iter, value, result.cast()) };
    match status {
        1 => ffi::PySendResult::PYGEN_NEXT,
        0 => ffi::PySendResult::PYGEN_RETURN,
        _ => ffi::PySendResult::PYGEN_ERROR,
    }
}

/// The body of [`am_send`]; returns 1 (`PYGEN_NEXT`) or 0 (`PYGEN_RETURN`) after storing a new
/// reference in `*result`, or an error (the trampoline raises it and returns -1).
///
/// # Safety
/// As for [`am_send`]; `result` is its `*mut *mut PyObject`, passed as the trampoline's third
/// pointer.
unsafe fn am_send_in_trampoline(
    py: Python<'_>,
    iter: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    result: *mut ffi::PyObject,
) -> PyResult<std::ffi::c_int> {
    // SAFETY: `iter` is a live instance of the class (see `am_send`), borrowed for the call.
    let coroutine = unsafe { Borrowed::from_ptr(py, iter).cast_unchecked::<AsyncDefCoroutine>() };
    let value = if value.is_null() {
        py.None().into_bound(py)
    } else {
        // SAFETY: a valid object, borrowed from the caller: a new reference is taken here.
        unsafe { Bound::from_borrowed_ptr(py, value) }
    };
    let (status, object) = match coroutine.get().send_impl(py, value)? {
        Outcome::Yielded(object) => (1, object),
        Outcome::Returned(object) => (0, object),
    };
    // SAFETY: `result` is `am_send`'s `*mut *mut PyObject` (valid for a write); the new
    // reference goes to the caller.
    unsafe { *result.cast::<*mut ffi::PyObject>() = object.into_ptr() };
    Ok(status)
}

unsafe extern "C" fn finalize_coroutine(object: *mut ffi::PyObject) {
    // Attached for PyO3 too, so that what is dropped here is released at once. Not possible
    // while the interpreter shuts down, when a suspended coroutine cannot be closed anyway.
    Python::try_attach(|py| {
        // SAFETY: CPython calls tp_finalize with the GIL held, on a live instance of the class
        // (which is not subclassable) whose slot this is.
        let coroutine =
            unsafe { Borrowed::from_ptr(py, object).cast_unchecked::<AsyncDefCoroutine>() };
        // A panic must not unwind into CPython.
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            coroutine.get().finalize(py);
        })) {
            panic_to_pyerr(payload).write_unraisable(py, Some(&coroutine));
        }
    });
}

#[pymethods]
impl AsyncDefCoroutine {
    /// Resumes the coroutine with `value`; returns what it yields next, or raises
    /// StopIteration with its result.
    #[pyo3(signature = (value, /))]
    fn send(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        outcome_to_python(py, self.send_impl(py, value))
    }

    /// Raises an exception at the point where the coroutine is suspended: `throw(exc)`, or
    /// the deprecated `throw(type[, value[, traceback]])`.
    #[pyo3(signature = (*args, **kwargs))]
    fn throw(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let args = ThrowArgs::parse(args, kwargs)?;
        outcome_to_python(py, self.throw_impl(py, &args))
    }

    /// Raises GeneratorExit at the point where the coroutine is suspended.
    fn close(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut state = self.borrow_mut()?;
        self.close_with(py, &mut state, false)
    }

    /// The coroutine itself. As CPython's `await` does for a coroutine, refuses one that is
    /// suspended in an await, that is, driven by another awaiter already.
    fn __await__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        if let Some(State::Running(running)) = slf.get().state.try_borrow().as_deref() {
            if running.fiber.is_suspended() {
                return Err(PyRuntimeError::new_err(
                    "coroutine is being awaited already",
                ));
            }
        }
        Ok(slf)
    }

    /// `__await__()` returns the coroutine itself, which must then be iterable for
    /// `yield from coro.__await__()` (a native coroutine's await-wrapper is).
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        outcome_to_python(py, self.send_impl(py, py.None().into_bound(py)))
    }

    #[getter]
    fn __name__<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        if let Some(name) = self.assigned_name(py, NameKind::Name) {
            return name;
        }
        let func = self.func.bind(py);
        let name = func
            .getattr("__name__")
            .and_then(|name| name.extract())
            .unwrap_or_else(|_| self.qualname(py));
        PyString::new(py, &name)
    }

    #[setter(__name__)]
    fn set_name(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.assign_name(NameKind::Name, Some(value))
    }

    #[deleter(__name__)]
    fn delete_name(&self) -> PyResult<()> {
        self.assign_name(NameKind::Name, None)
    }

    #[getter]
    fn __qualname__<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.assigned_name(py, NameKind::Qualname)
            .unwrap_or_else(|| PyString::new(py, &self.qualname(py)))
    }

    #[setter(__qualname__)]
    fn set_qualname(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.assign_name(NameKind::Qualname, Some(value))
    }

    #[deleter(__qualname__)]
    fn delete_qualname(&self) -> PyResult<()> {
        self.assign_name(NameKind::Qualname, None)
    }

    /// Whether the sync code is running right now.
    #[getter]
    fn cr_running(&self) -> bool {
        self.state.try_borrow().is_none()
    }

    /// Whether the sync code is suspended in `awaitlet()` (3.11+, as on coroutines).
    #[getter]
    fn cr_suspended(&self, py: Python<'_>) -> PyResult<bool> {
        if py.version_info() < (3, 11) {
            return Err(pyo3::exceptions::PyAttributeError::new_err(
                "'async_def_coroutine' object has no attribute 'cr_suspended'",
            ));
        }
        Ok(
            matches!(self.state.try_borrow().as_deref(), Some(State::Running(running)) if running.fiber.is_suspended()),
        )
    }

    /// `inspect`'s name for the state (read by `inspect.getcoroutinestate` since 3.15).
    #[getter]
    fn cr_state(&self) -> &'static str {
        match self.state.try_borrow().as_deref() {
            None => "CORO_RUNNING",
            Some(State::Created { .. }) => "CORO_CREATED",
            Some(State::Running(running)) if running.fiber.is_suspended() => "CORO_SUSPENDED",
            Some(State::Running(_)) => "CORO_RUNNING",
            Some(State::Done) => "CORO_CLOSED",
        }
    }

    /// What the suspended sync code awaits.
    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match self.state.try_borrow().as_deref() {
            Some(State::Running(running)) => running
                .awaiting
                .as_ref()
                .map(|awaitable| awaitable.clone_ref(py)),
            _ => None,
        }
    }

    /// The innermost frame of the suspended sync code (its `f_back` chain leads to `fn`);
    /// before the start, a not yet started frame of `fn`, as a new coroutine has; None once
    /// finished.
    #[getter]
    fn cr_frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.state.try_borrow().as_deref() {
            Some(State::Running(running)) => running.fiber.top_frame(py),
            Some(State::Created { .. }) => Ok(unstarted_frame(self.func.bind(py))),
            _ => Ok(None),
        }
    }

    /// The code of `cr_frame` while suspended, else `fn`'s code (if it has one).
    #[getter]
    fn cr_code<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        // Not the unstarted frame's code: that is a stand-in, and `fn`'s is what it stands for.
        if let Some(State::Running(running)) = self.state.try_borrow().as_deref() {
            if let Some(frame) = running.fiber.top_frame(py)? {
                return frame.getattr("f_code").map(Some);
            }
        }
        Ok(self.func.bind(py).getattr("__code__").ok())
    }

    #[getter]
    fn cr_origin(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.origin.as_ref().map(|origin| origin.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        let py = slf.py();
        format!(
            "<async_def coroutine object {} at {:#x}>",
            slf.get().qualname(py),
            slf.as_ptr() as usize
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        match self.state.try_borrow().as_deref() {
            Some(State::Created { args, kwargs }) => {
                visit.call(args)?;
                visit.call(kwargs)?;
            }
            Some(State::Running(running)) => {
                visit.call(&running.awaiting)?;
                running.fiber.traverse(&visit)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Some(mut state) = self.state.try_borrow_mut() {
            match &mut *state {
                // A never-started coroutine caught in a garbage cycle has nothing to run.
                State::Created { .. } => *state = State::Done,
                // Sync code still suspended here could not be finished by the finalizer (it
                // belongs to another thread, or the interpreter is shutting down): its stack is
                // left alone, and leaked when this object is deallocated. Only what the sync
                // code does not use is dropped.
                State::Running(running) => running.awaiting = None,
                State::Done => {}
            }
        }
    }
}

/// `cr_origin` as CPython records it: `(filename, line, function)` of the innermost `depth`
/// frames of the code creating the coroutine, innermost first.
fn creation_origin(py: Python<'_>, depth: usize) -> PyResult<Py<PyTuple>> {
    let mut frames = Vec::new();
    let mut frame = py.import("sys")?.getattr("_getframe")?.call0()?;
    while frames.len() < depth && !frame.is_none() {
        let code = frame.getattr("f_code")?;
        frames.push((
            code.getattr("co_filename")?,
            frame.getattr("f_lineno")?,
            code.getattr("co_name")?,
        ));
        frame = frame.getattr("f_back")?;
    }
    Ok(PyTuple::new(py, frames)?.unbind())
}

/// A frame that has not run a single instruction, named and placed like `func`'s code:
/// what `cr_frame` of a coroutine that has not started shows (so `inspect` and asyncio's
/// debug output see a created coroutine). None for callables without Python code.
fn unstarted_frame<'py>(func: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    static TEMPLATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = func.py();
    let build = || -> PyResult<Bound<'py, PyAny>> {
        let code = func.getattr("__code__")?;
        let template = TEMPLATE.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            let builtins = py.import("builtins")?;
            let module = builtins.getattr("compile")?.call1((
                "def _():\n    yield\n",
                "<awaitlet>",
                "exec",
            ))?;
            Ok(module.getattr("co_consts")?.get_item(0)?.unbind())
        })?;
        let replace_kwargs = PyDict::new(py);
        for field in ["co_name", "co_qualname", "co_filename", "co_firstlineno"] {
            if let Ok(value) = code.getattr(field) {
                replace_kwargs.set_item(field, value)?;
            }
        }
        let named = template
            .bind(py)
            .call_method("replace", (), Some(&replace_kwargs))?;
        let function_type = py.import("types")?.getattr("FunctionType")?;
        let generator_function = function_type.call1((named, PyDict::new(py)))?;
        generator_function.call0()?.getattr("gi_frame")
    };
    build().ok().filter(|frame| !frame.is_none())
}

fn outcome_to_python(py: Python<'_>, outcome: PyResult<Outcome>) -> PyResult<Py<PyAny>> {
    match outcome? {
        Outcome::Yielded(value) => Ok(value),
        Outcome::Returned(value) => Err(stop_iteration(py, value)),
    }
}

/// PEP 479, as for any coroutine: a StopIteration raised out of the coroutine must not end
/// its awaiter's delegation silently. The RuntimeError has it as `__cause__` and
/// `__context__`, as CPython's own replacement does.
fn stop_iteration_to_runtime_error(py: Python<'_>, err: PyErr) -> PyErr {
    if !err.is_instance_of::<PyStopIteration>(py) {
        return err;
    }
    let original = err.value(py).clone();
    let replacement = PyRuntimeError::new_err("coroutine raised StopIteration");
    replacement.set_cause(py, Some(err));
    // SAFETY: GIL held; both are exception instances; PyException_SetContext steals the
    // reference passed to it.
    unsafe { ffi::PyException_SetContext(replacement.value(py).as_ptr(), original.into_ptr()) };
    replacement
}

fn stop_iteration(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    if value.is_none(py) {
        PyStopIteration::new_err(())
    } else {
        // A 1-tuple so that a tuple result is not taken as the constructor's arguments.
        PyStopIteration::new_err((value,))
    }
}

/// The result of delegating one step to an awaited iterator.
enum Delegated {
    Yielded(Py<PyAny>),
    Returned(Py<PyAny>),
    Raised(PyErr),
}

/// `yield from`'s send step: `PyIter_Send` uses `am_send`, `__next__` or `send` as CPython's
/// own delegation does.
fn send_into(py: Python<'_>, awaitable: &Py<PyAny>, value: Option<&Bound<'_, PyAny>>) -> Delegated {
    // SAFETY: None is immortal (or kept alive by the interpreter): a borrowed pointer is
    // enough, and avoids a `Py` whose drop would look up thread-local GIL state.
    let value = value.map_or(unsafe { ffi::Py_None() }, Bound::as_ptr);
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held; both objects are alive for the call; `result` receives a new
    // reference for PYGEN_NEXT and PYGEN_RETURN and stays NULL on error.
    let status = unsafe { ffi::PyIter_Send(awaitable.as_ptr(), value, &mut result) };
    if status == ffi::PySendResult::PYGEN_ERROR {
        return Delegated::Raised(PyErr::fetch(py));
    }
    // SAFETY: PYGEN_NEXT and PYGEN_RETURN hand over a new reference in `result`.
    let value = unsafe { Bound::from_owned_ptr(py, result) }.unbind();
    if status == ffi::PySendResult::PYGEN_NEXT {
        Delegated::Yielded(value)
    } else {
        Delegated::Returned(value)
    }
}

/// The arguments of `throw()`, kept as given: a delegate's own `throw` receives them so.
struct ThrowArgs<'py> {
    args: Bound<'py, PyTuple>,
}

impl<'py> ThrowArgs<'py> {
    /// Checks the argument count (and warns about the 3-argument form, since 3.12) with
    /// the messages of `coroutine.throw`.
    fn parse(args: &Bound<'py, PyTuple>, kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<Self> {
        let py = args.py();
        if kwargs.is_some_and(|kwargs| !kwargs.is_empty()) {
            return Err(PyTypeError::new_err(if py.version_info() >= (3, 11) {
                "async_def_coroutine.throw() takes no keyword arguments"
            } else {
                "throw() takes no keyword arguments"
            }));
        }
        match args.len() {
            0 => Err(PyTypeError::new_err(
                "throw expected at least 1 argument, got 0",
            )),
            count @ 4.. => Err(PyTypeError::new_err(format!(
                "throw expected at most 3 arguments, got {count}"
            ))),
            count => {
                if count > 1 && py.version_info() >= (3, 12) {
                    PyErr::warn(
                        py,
                        &py.get_type::<pyo3::exceptions::PyDeprecationWarning>(),
                        c"the (type, exc, tb) signature of throw() is deprecated, use the single-arg signature instead.",
                        1,
                    )?;
                }
                Ok(Self { args: args.clone() })
            }
        }
    }

    fn get(&self, index: usize) -> Option<Bound<'py, PyAny>> {
        self.args.get_item(index).ok()
    }

    /// The exception to raise, checked and built as `generator.throw` does.
    fn exception(&self) -> PyResult<PyErr> {
        let typ = self.get(0).expect("throw() arguments counted in parse()");
        exception_from_throw_args(self.args.py(), typ, self.get(1), self.get(2))
    }

    /// Whether GeneratorExit is thrown, which closes what the coroutine awaits instead of
    /// being thrown into it.
    fn is_generator_exit(&self) -> bool {
        let Some(typ) = self.get(0) else {
            return false;
        };
        match typ.cast::<PyType>() {
            Ok(typ) => typ.is_subclass_of::<PyGeneratorExit>().unwrap_or(false),
            Err(_) => typ.is_instance_of::<PyGeneratorExit>(),
        }
    }
}

/// `yield from`'s throw step; `None` when the iterator has no `throw` (the exception then
/// goes to the delegating code itself).
fn throw_into(py: Python<'_>, awaitable: &Py<PyAny>, args: &ThrowArgs<'_>) -> Option<Delegated> {
    let awaitable = awaitable.bind(py);
    let throw = match awaitable.getattr(pyo3::intern!(py, "throw")) {
        Ok(throw) => throw,
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => return None,
        Err(err) => return Some(Delegated::Raised(err)),
    };
    let call_args = if args.args.len() > 1 && is_generator_like(awaitable) {
        // CPython passes a generator delegate the arguments without a second deprecation
        // warning: hand it the one exception they describe.
        match args.exception() {
            Ok(exc) => PyTuple::new(py, [exc.into_value(py)]).map(Bound::into_any),
            Err(err) => return Some(Delegated::Raised(err)),
        }
    } else {
        Ok(args.args.clone().into_any())
    };
    let result = call_args.and_then(|call_args| throw.call1(call_args.cast_into::<PyTuple>()?));
    Some(match result {
        Ok(value) => Delegated::Yielded(value.unbind()),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
            match err.value(py).getattr(pyo3::intern!(py, "value")) {
                Ok(value) => Delegated::Returned(value.unbind()),
                Err(err) => Delegated::Raised(err),
            }
        }
        Err(err) => Delegated::Raised(err),
    })
}

/// A generator, a native coroutine or an `async_def` coroutine.
fn is_generator_like(object: &Bound<'_, PyAny>) -> bool {
    // SAFETY: GIL held (the Bound proves it), valid object pointer.
    let native = unsafe {
        ffi::PyGen_Check(object.as_ptr()) != 0 || ffi::PyCoro_CheckExact(object.as_ptr()) != 0
    };
    native || object.is_instance_of::<AsyncDefCoroutine>()
}

/// `yield from`'s close step.
pub(crate) fn close_iter(py: Python<'_>, awaitable: &Py<PyAny>) -> PyResult<()> {
    match awaitable.bind(py).getattr(pyo3::intern!(py, "close")) {
        Ok(close) => close.call0().map(drop),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Builds the exception `throw(typ, val, tb)` raises, with the rules of `generator.throw`.
pub fn exception_from_throw_args(
    py: Python<'_>,
    typ: Bound<'_, PyAny>,
    val: Option<Bound<'_, PyAny>>,
    tb: Option<Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let val = val.filter(|val| !val.is_none());
    let tb = tb.filter(|tb| !tb.is_none());
    if let Some(tb) = &tb {
        if !tb.is_instance_of::<pyo3::types::PyTraceback>() {
            return Err(PyTypeError::new_err(
                "throw() third argument must be a traceback object",
            ));
        }
    }
    let err = if let Ok(exc_type) = typ.cast::<PyType>() {
        if !exc_type.is_subclass_of::<pyo3::exceptions::PyBaseException>()? {
            return Err(not_an_exception(&typ));
        }
        let args = val.map_or_else(|| py.None(), Bound::unbind);
        let err = PyErr::from_type(exc_type.clone(), args);
        // Normalize now, as generator.throw does, so the instance exists before it is raised.
        err.value(py);
        err
    } else if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        if val.is_some() {
            return Err(PyTypeError::new_err(
                "instance exception may not have a separate value",
            ));
        }
        PyErr::from_value(typ)
    } else {
        return Err(not_an_exception(&typ));
    };
    if let Some(tb) = tb {
        err.value(py).setattr("__traceback__", tb)?;
    }
    Ok(err)
}

fn not_an_exception(typ: &Bound<'_, PyAny>) -> PyErr {
    let name = typ
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_default();
    PyTypeError::new_err(format!(
        "exceptions must be classes or instances deriving from BaseException, not {name}"
    ))
}

/// The type of `async_def`, a coroutine function implemented natively:
/// `async_def(fn, /, *args, assert_await_occurs=False, **kwargs)` runs the sync callable
/// `fn(*args, **kwargs)` on a fiber of its own, where it may call `awaitlet()`. (The package
/// gives the `async_def` object its signature, annotations and docstring.)
#[pyclass(
    module = "awaitlet._awaitlet",
    name = "async_def_function",
    frozen,
    dict
)]
pub struct AsyncDefFunction;

#[pymethods]
impl AsyncDefFunction {
    /// `async_def` itself, unbound, as for a builtin function: being a (non-data) descriptor is
    /// what makes `inspect.isroutine()` true of it, and so `help()` show its signature.
    fn __get__<'py>(
        slf: Bound<'py, Self>,
        _instance: &Bound<'py, PyAny>,
        _owner: Option<&Bound<'py, PyAny>>,
    ) -> Bound<'py, Self> {
        slf
    }

    #[pyo3(signature = (r#fn, /, *args, assert_await_occurs = false, **kwargs))]
    fn __call__(
        &self,
        r#fn: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        assert_await_occurs: bool,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        start_on_fiber(&r#fn, &args, kwargs.as_ref(), assert_await_occurs)
    }
}

/// What `async_def(fn, *args, assert_await_occurs=..., **kwargs)` returns, given its
/// arguments already parsed: the coroutine that runs `fn(*args, **kwargs)` on a fiber (or,
/// where the process uses the real greenlet package, in one of its greenlets).
fn start_on_fiber(
    r#fn: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
    assert_await_occurs: bool,
) -> PyResult<Py<PyAny>> {
    let py = r#fn.py();
    if !r#fn.is_callable() {
        let name = r#fn
            .get_type()
            .name()
            .map(|name| name.to_string())
            .unwrap_or_default();
        return Err(PyTypeError::new_err(format!(
            "async_def() argument 'fn' must be callable, not {name}"
        )));
    }
    if real_greenlet_module(py)?.is_some() {
        return start_on_real_greenlet(r#fn, args, kwargs, assert_await_occurs);
    }
    let mut coroutine = AsyncDefCoroutine::new(
        r#fn.clone().unbind(),
        args.clone().unbind(),
        kwargs.map(|kwargs| kwargs.clone().unbind()),
        assert_await_occurs,
    );
    let depth = coroutine_origin_tracking_depth(py);
    if depth > 0 {
        coroutine.origin = Some(creation_origin(py, depth)?);
    }
    Ok(Py::new(py, coroutine)?.into_any())
}

/// [`start_on_fiber`] in a process that uses the greenlet package, whose greenlets
/// SQLAlchemy's `await_only()` requires: the sync code runs in one of those.
#[inline(never)]
fn start_on_real_greenlet(
    r#fn: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
    assert_await_occurs: bool,
) -> PyResult<Py<PyAny>> {
    let py = r#fn.py();
    static ON_GREENLET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let on_greenlet = ON_GREENLET.import(py, "awaitlet._real_greenlet", "async_def_on_greenlet")?;
    let keyword = pyo3::intern!(py, "assert_await_occurs");
    let call_args = with_first(r#fn, args)?;
    if let Some(kwargs) = kwargs {
        if kwargs.contains(keyword)? {
            // `fn` takes a keyword that async_def_on_greenlet() reserves: bind its arguments
            // first.
            static PARTIAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let partial = PARTIAL.import(py, "functools", "partial")?;
            let bound = partial.call(call_args, Some(kwargs))?;
            return start_on_real_greenlet(&bound, &PyTuple::empty(py), None, assert_await_occurs);
        }
    }
    let call_kwargs = match kwargs {
        Some(kwargs) => kwargs.copy()?,
        None => PyDict::new(py),
    };
    call_kwargs.set_item(keyword, assert_await_occurs)?;
    on_greenlet
        .call(call_args, Some(&call_kwargs))
        .map(Bound::unbind)
}

/// `(first, *rest)`.
fn with_first<'py>(
    first: &Bound<'py, PyAny>,
    rest: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyTuple>> {
    let items: Vec<Bound<'py, PyAny>> = std::iter::once(first.clone()).chain(rest.iter()).collect();
    PyTuple::new(first.py(), items)
}

/// `_call_on_fiber(fn, args, kwargs=None)`: `async_def(fn, *args, **kwargs)` for callers that
/// hold the arguments as a tuple and a dict already (the decorators' wrappers), without
/// unpacking them into a call, and without reserving any keyword for async_def itself:
/// every item of `kwargs` goes to `fn`.
#[pyfunction]
#[pyo3(name = "_call_on_fiber", signature = (r#fn, args, kwargs = None, /))]
pub fn call_on_fiber(
    r#fn: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    start_on_fiber(
        r#fn,
        args,
        kwargs.filter(|kwargs| !kwargs.is_empty()),
        false,
    )
}

/// `awaitlet(awaitable)`: from sync code running under `async_def` (or under a greenlet
/// that declares `__sqlalchemy_greenlet_provider__`), wait for `awaitable` and return its
/// result (or raise its exception). `args_end`: where its arguments end, when Python code
/// called it with the vectorcall convention.
fn awaitlet(
    py: Python<'_>,
    awaitable: &Bound<'_, PyAny>,
    args_end: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    match ActiveFiber::running() {
        Some(fiber) if fiber.kind() == Kind::AsyncDef => {
            switch_to_resumer(py, fiber, awaitable, args_end)
        }
        fiber => awaitlet_elsewhere(py, fiber, awaitable, args_end),
    }
}

/// [`awaitlet`] not on an `async_def` fiber (kept out of its frame, see
/// [`switch_to_resumer`]).
#[inline(never)]
fn awaitlet_elsewhere(
    py: Python<'_>,
    fiber: Option<ActiveFiber>,
    awaitable: &Bound<'_, PyAny>,
    args_end: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    match fiber {
        Some(fiber)
            if fiber
                .greenlet(py)
                .map_or(Ok(false), |greenlet| is_awaitlet_provider(py, &greenlet))? =>
        {
            return switch_to_resumer(py, fiber, awaitable, args_end);
        }
        Some(_) => {}
        // Not on a fiber: maybe in a greenlet of the real greenlet package that awaits on
        // behalf of its code (SQLAlchemy's, when greenlet is installed).
        None => {
            if let Some(provider) = real_greenlet_provider(py)? {
                let parent = provider.getattr(pyo3::intern!(py, "parent"))?;
                return parent
                    .call_method1(pyo3::intern!(py, "switch"), (awaitable,))
                    .map(Bound::unbind);
            }
        }
    }
    close_if_coroutine(py, awaitable)?;
    Err(NoAwaitletContext::new_err(
        "Can't call awaitlet() unless the call stack was invoked with async_def().",
    ))
}

/// Whether `awaitlet()` called here would suspend (rather than raise NoAwaitletContext): the
/// caller runs below `async_def()` or in a greenlet that awaits on behalf of its code.
#[pyfunction]
pub fn in_async_def(py: Python<'_>) -> PyResult<bool> {
    match ActiveFiber::running() {
        Some(fiber) if fiber.kind() == Kind::AsyncDef => Ok(true),
        Some(fiber) => fiber
            .greenlet(py)
            .map_or(Ok(false), |greenlet| is_awaitlet_provider(py, &greenlet)),
        None => Ok(real_greenlet_provider(py)?.is_some()),
    }
}

/// `awaitlet()` as CPython calls it (`METH_FASTCALL | METH_KEYWORDS`), defined by hand rather
/// than with `#[pyfunction]` for the address of its arguments: when Python code calls
/// `awaitlet(x)`, the evaluation loop passes them in place, at the top of the calling frame's
/// value stack, which is how (before 3.14) the collector can be shown that stack while the sync
/// code is suspended (see [`ActiveFiber::suspend_in_call`]). The argument is borrowed from the
/// caller, so no reference is held here across the suspension.
///
/// # Safety
/// Called through PyO3's trampoline, with the arguments CPython passes to such a function.
unsafe fn awaitlet_fastcall(
    py: Python<'_>,
    _module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: CPython passes `nargs` arguments at `args`, then one value for each name in
    // `kwnames` (a tuple of str, or NULL), all valid for the duration of the call.
    let (awaitable, count) = if nargs == 1 && kwnames.is_null() {
        // SAFETY: as above, with exactly one argument.
        (unsafe { Borrowed::from_ptr(py, *args) }, 1)
    } else {
        // SAFETY: as above.
        unsafe { single_argument(py, args, nargs, kwnames) }?
    };
    let call = ArgsEnd::of(args, count).with_callable(AWAITLET_FUNCTION.load(Ordering::Relaxed));
    awaitlet(py, &awaitable, call).map(Py::into_ptr)
}

/// The C function behind `awaitlet()`. Its common case, `awaitlet(x)` in sync code on a fiber
/// that a task on the thread's own stack resumed, takes a short way with small stack frames
/// (they stay on the fiber's stack, in the pages that stay resident while it is suspended);
/// everything else goes through the trampoline PyO3's own wrappers use, which tells PyO3 the
/// thread is attached (so that references dropped in the call are released at once, not
/// queued in PyO3's pool) and turns an error or a panic into a raised exception. The short
/// way needs no such telling: the fiber runs inside the `send` (or `throw`) of the coroutine
/// that resumed it, a PyO3 method, which did it.
///
/// # Safety
/// Called by CPython with the arguments of a `METH_FASTCALL | METH_KEYWORDS` function.
unsafe extern "C" fn awaitlet_entry(
    module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if nargs == 1 && kwnames.is_null() {
        if let Some(fiber) = ActiveFiber::running() {
            if fiber.kind() == Kind::AsyncDef && fiber.resumer().is_none() {
                // SAFETY: CPython passes one argument at `args`, valid for the call.
                return unsafe { awaitlet_on_task_fiber(fiber, args) };
            }
        }
    }
    // SAFETY: the arguments as CPython passed them.
    unsafe { awaitlet_general(module, args, nargs, kwnames) }
}

/// [`awaitlet_entry`]'s way for everything but its common case (kept out of its frame).
///
/// # Safety
/// As for [`awaitlet_entry`].
#[inline(never)]
unsafe fn awaitlet_general(
    module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let general = pyo3::impl_::trampoline::get_trampoline_function!(
        fastcall_cfunction_with_keywords,
        awaitlet_fastcall
    );
    // SAFETY: the arguments as CPython passed them, to the wrapper made for them.
    unsafe { general(module, args, nargs, kwnames) }
}

/// `awaitlet(*args)` with one argument, on `fiber`, an `async_def` fiber resumed by the
/// thread's own stack (see [`awaitlet_entry`]): a new reference, or NULL with an exception
/// set.
///
/// # Safety
/// GIL held (CPython calls `awaitlet()` with it); `args` points to one valid object.
#[inline(never)]
unsafe fn awaitlet_on_task_fiber(
    fiber: ActiveFiber,
    args: *const *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls `awaitlet()` with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: one valid object at `args` for the duration of the call.
        let awaitable = unsafe { Borrowed::from_ptr(py, *args) };
        let call = ArgsEnd::of(args, 1).with_callable(AWAITLET_FUNCTION.load(Ordering::Relaxed));
        await_on_task_fiber(py, fiber, &awaitable, call)
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => raise(py, panic_to_pyerr(payload)),
    }
}

/// [`switch_to_resumer`] for an `async_def` fiber resumed by the thread's own stack, returning
/// what a C function returns (a new reference, or NULL with an exception set) rather than a
/// `PyResult`, which takes several words in a frame that stays on the fiber's stack.
fn await_on_task_fiber(
    py: Python<'_>,
    fiber: ActiveFiber,
    value: &Bound<'_, PyAny>,
    args_end: ArgsEnd,
) -> *mut ffi::PyObject {
    if fiber.is_closing() {
        return raise(py, refuse_while_closing(py, fiber, value));
    }
    match first_step(py, fiber, value) {
        FirstStep::Returned(result) => result.into_ptr(),
        FirstStep::Raised(exception) => raise(py, raised(py, exception)),
        FirstStep::Yielded(iterator, yielded) => {
            match fiber.suspend_after_first_step(py, iterator, yielded, args_end) {
                Resume::Value(value) => value.into_ptr(),
                Resume::Throw(err) => raise(py, err),
            }
        }
    }
}

/// Sets `err` as the current exception and returns NULL, for a C function to return.
#[cold]
#[inline(never)]
fn raise(py: Python<'_>, err: PyErr) -> *mut ffi::PyObject {
    err.restore(py);
    std::ptr::null_mut()
}

/// The one argument of `awaitlet(awaitable)` (positional or by name), borrowed from the
/// caller, and how many values the caller passed.
///
/// # Safety
/// `args`, `nargs` and `kwnames` are as CPython passes them to a `METH_FASTCALL |
/// METH_KEYWORDS` function.
#[inline(never)]
unsafe fn single_argument<'a, 'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<(Borrowed<'a, 'py, PyAny>, usize)> {
    // SAFETY: `kwnames` is NULL or a tuple of str, valid for the call.
    let names = unsafe { Borrowed::from_ptr_or_opt(py, kwnames) }
        // SAFETY: CPython's keyword names are a tuple.
        .map(|names| unsafe { names.cast_unchecked::<PyTuple>() });
    let keywords = names.as_ref().map_or(0, |names| names.len());
    let positional = usize::try_from(nargs).unwrap_or(0);
    if positional > 1 {
        return Err(PyTypeError::new_err(format!(
            "awaitlet() takes 1 positional arguments but {positional} were given"
        )));
    }
    if let Some(names) = &names {
        for name in names.iter() {
            if positional == 1 || name.ne("awaitable")? {
                return Err(PyTypeError::new_err(if name.eq("awaitable")? {
                    "awaitlet() got multiple values for argument 'awaitable'".to_owned()
                } else {
                    format!("awaitlet() got an unexpected keyword argument '{name}'")
                }));
            }
        }
    }
    if positional + keywords != 1 {
        return Err(PyTypeError::new_err(
            "awaitlet() missing 1 required positional argument: 'awaitable'",
        ));
    }
    // SAFETY: there is exactly one value at `args`, valid for the call.
    Ok((unsafe { Borrowed::from_ptr(py, *args) }, 1))
}

static AWAITLET_DEF: MethodDef = MethodDef::fastcall_with_keywords(
    c"awaitlet",
    awaitlet_entry,
    c"awaitlet(awaitable)
--

Wait for ``awaitable`` from sync code running under ``async_def()``; return its result.

The stack that ``async_def()`` started is suspended here while the task awaiting the
``async_def()`` coroutine awaits ``awaitable`` on the event loop, which meanwhile runs
other tasks; then this call returns the awaitable's result, or raises its exception.
It works in a greenlet that declares ``__sqlalchemy_greenlet_provider__`` too (the
greenlets of SQLAlchemy's asyncio extension), whose parent does the awaiting.

Args:
    awaitable: a coroutine, task, future or any other object ``await`` accepts.

Raises:
    NoAwaitletContext: called outside ``async_def()`` (and outside such a greenlet);
        a coroutine passed is closed, so that it does not warn it was never awaited.
    BaseException: whatever awaiting ``awaitable`` raises, including
        ``asyncio.CancelledError`` when the awaiting task is cancelled.",
);

/// Adds `awaitlet()` to `module`.
pub fn add_awaitlet(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let function = add_static_function(module, &AWAITLET_DEF)?;
    // Kept for good (the module keeps it anyway): profile functions are told about calls of it
    // at switches (see `ArgsEnd::with_callable`).
    AWAITLET_FUNCTION.store(function.into_ptr(), Ordering::Relaxed);
    Ok(())
}

/// The `awaitlet()` function object (null until the module is initialized).
static AWAITLET_FUNCTION: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// The greenlet package, if this process has imported it (rather than awaitlet's facade).
fn real_greenlet_module(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    // SAFETY: GIL held; returns a borrowed reference to the interpreter's module dict.
    let modules = unsafe { Bound::from_borrowed_ptr(py, ffi::PyImport_GetModuleDict()) };
    // A dict lookup: no KeyError made (and dropped) at each call while greenlet is absent.
    let Some(greenlet) = modules
        .cast::<PyDict>()?
        .get_item(pyo3::intern!(py, "greenlet"))?
    else {
        return Ok(None);
    };
    if greenlet.as_ptr() == KNOWN_FACADE.load(Ordering::Relaxed) || greenlet.is_none() {
        return Ok(None);
    }
    if greenlet.as_ptr() == KNOWN_REAL.load(Ordering::Relaxed) {
        return Ok(Some(greenlet));
    }
    let facade = optional_attr(&greenlet, pyo3::intern!(py, "__awaitlet_facade__"))?.is_some();
    let known = if facade { &KNOWN_FACADE } else { &KNOWN_REAL };
    let old = known.swap(greenlet.clone().into_ptr(), Ordering::Relaxed);
    if !old.is_null() {
        // SAFETY: GIL held; the strong reference the static held.
        unsafe { ffi::Py_DECREF(old) };
    }
    Ok((!facade).then_some(greenlet))
}

/// The facade module, and the real greenlet module, last found as `sys.modules["greenlet"]`
/// (strong references, so that no other object can take their addresses), which
/// [`real_greenlet_module`] then knows at once, with no attribute lookup.
static KNOWN_FACADE: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());
static KNOWN_REAL: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// The running greenlet of the real greenlet package, if that package is in use and the
/// greenlet awaits on behalf of its code.
fn real_greenlet_provider(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    let Some(greenlet) = real_greenlet_module(py)? else {
        return Ok(None);
    };
    let current = greenlet.getattr(pyo3::intern!(py, "getcurrent"))?.call0()?;
    Ok(is_awaitlet_provider(py, &current)?.then_some(current))
}

/// Whether a greenlet marks itself as one that awaits on behalf of its code (SQLAlchemy's
/// greenlet subclass does).
fn is_awaitlet_provider(py: Python<'_>, greenlet: &Bound<'_, PyAny>) -> PyResult<bool> {
    // Missing on most greenlets (a thread's main one): no AttributeError made for them.
    match optional_attr(
        greenlet,
        pyo3::intern!(py, "__sqlalchemy_greenlet_provider__"),
    )? {
        Some(flag) => flag.is_truthy(),
        None => Ok(false),
    }
}

/// Suspends the running fiber, handing `value` to whoever resumed it, and returns what it is
/// resumed with. An `async_def` fiber's driver awaits `value`, so it must be awaitable: a
/// TypeError is raised here, in the sync code, otherwise, as `await` would. `value` is
/// borrowed, not held, across the suspension: a reference kept in a Rust local there would be
/// one the collector cannot see. `args_end`: see [`ActiveFiber::suspend_in_call`].
pub fn switch_to_resumer(
    py: Python<'_>,
    fiber: ActiveFiber,
    value: &Bound<'_, PyAny>,
    args_end: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    if fiber.is_closing() {
        return Err(refuse_while_closing(py, fiber, value));
    }
    // The code on the way to a suspension keeps small stack frames, with what it does not
    // always do out of line: the frames stay on the fiber's stack, in the pages that stay
    // resident while it is suspended.
    let resumed = match fiber.kind() {
        Kind::AsyncDef if fiber.resumer().is_none() => {
            // Resumed by a task on the thread's own stack: run the awaitable's first step as
            // that task would, on its machine stack (see `run_as_resumer`), without a switch,
            // and switch only if it does not complete at once.
            match first_step(py, fiber, value) {
                FirstStep::Returned(result) => return Ok(result),
                FirstStep::Raised(exception) => return Err(raised(py, exception)),
                FirstStep::Yielded(iterator, yielded) => {
                    fiber.suspend_after_first_step(py, iterator, yielded, args_end)
                }
            }
        }
        _ => return switch_to_fiber_resumer(py, fiber, value, args_end),
    };
    match resumed {
        Resume::Value(value) => Ok(value),
        Resume::Throw(err) => Err(err),
    }
}

/// [`switch_to_resumer`] for a greenlet, or for an `async_def` fiber resumed by another fiber.
#[inline(never)]
fn switch_to_fiber_resumer(
    py: Python<'_>,
    fiber: ActiveFiber,
    value: &Bound<'_, PyAny>,
    args_end: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    let resumed = match fiber.kind() {
        Kind::AsyncDef => fiber.suspend_in_call(py, awaitable_iterator(value)?.unbind(), args_end),
        Kind::Greenlet => fiber.suspend_in_call(py, value.clone().unbind(), args_end),
    };
    match resumed {
        Resume::Value(value) => Ok(value),
        Resume::Throw(err) => Err(err),
    }
}

/// The error for a switch out of a fiber that is being closed.
#[cold]
#[inline(never)]
fn refuse_while_closing(py: Python<'_>, fiber: ActiveFiber, value: &Bound<'_, PyAny>) -> PyErr {
    if let Err(err) = close_if_coroutine(py, value) {
        return err;
    }
    PyRuntimeError::new_err(match fiber.kind() {
        Kind::AsyncDef => "coroutine ignored GeneratorExit",
        Kind::Greenlet => "greenlet ignored GreenletExit and switched again while being killed",
    })
}

/// How the first step of `await value` ended.
enum FirstStep {
    Returned(Py<PyAny>),
    /// (An exception object rather than a `PyErr`: a word, where a `PyErr` takes several, in
    /// a frame that stays on the fiber's stack.)
    Raised(Py<pyo3::exceptions::PyBaseException>),
    /// The iterator to delegate to, and what it yielded.
    Yielded(Py<PyAny>, Py<PyAny>),
}

/// The `PyErr` of an exception object.
#[cold]
#[inline(never)]
fn raised(py: Python<'_>, exception: Py<pyo3::exceptions::PyBaseException>) -> PyErr {
    PyErr::from_value(exception.into_bound(py).into_any())
}

/// The first step of `await value`, as the fiber's resumer would run it (see
/// [`ActiveFiber::run_as_resumer`]). `value`'s iterator is made here, on the fiber, in its
/// context, as `await` would make it.
#[inline(never)]
fn first_step(py: Python<'_>, fiber: ActiveFiber, value: &Bound<'_, PyAny>) -> FirstStep {
    let iterator = match awaitable_iterator(value) {
        Ok(iterator) => iterator.unbind(),
        Err(err) => return FirstStep::Raised(err.into_value(py)),
    };
    let sent = fiber.run_as_resumer(|| match send_into(py, &iterator, None) {
        Delegated::Returned(result) => Ok(Ok(result)),
        Delegated::Raised(err) => Err(err.into_value(py)),
        Delegated::Yielded(yielded) => Ok(Err(yielded)),
    });
    match sent {
        Ok(Ok(result)) => FirstStep::Returned(result),
        Err(exception) => FirstStep::Raised(exception),
        Ok(Err(yielded)) => FirstStep::Yielded(iterator, yielded),
    }
}

/// Closes a coroutine that will never be awaited, so it does not warn.
fn close_if_coroutine(py: Python<'_>, awaitable: &Bound<'_, PyAny>) -> PyResult<()> {
    static ISCOROUTINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let iscoroutine = ISCOROUTINE.get_or_try_init(py, || {
        py.import("asyncio")
            .and_then(|asyncio| asyncio.getattr("iscoroutine"))
            .map(Bound::unbind)
    })?;
    if iscoroutine.bind(py).call1((awaitable,))?.is_truthy()? {
        awaitable.call_method0("close")?;
    }
    Ok(())
}

/// What `await awaitable` iterates over, with the checks and messages of CPython's
/// GET_AWAITABLE.
fn awaitable_iterator<'py>(awaitable: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if is_coroutine_object(awaitable) {
        return Ok(awaitable.clone());
    }
    let py = awaitable.py();
    let type_ptr = awaitable.get_type().as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: a valid type object; PyType_GetSlot works on static and heap types since 3.10.
    let slot = unsafe { ffi::PyType_GetSlot(type_ptr, ffi::Py_am_await) };
    let type_name = || {
        awaitable
            .get_type()
            .name()
            .map(|name| name.to_string())
            .unwrap_or_default()
    };
    if slot.is_null() {
        return Err(PyTypeError::new_err(format!(
            "object {} can't be used in 'await' expression",
            type_name()
        )));
    }
    // SAFETY: the am_await slot has the unaryfunc signature.
    let am_await: ffi::unaryfunc = unsafe { std::mem::transmute(slot) };
    // SAFETY: GIL held; returns a new reference or NULL with an exception set.
    let iterator = unsafe { Bound::from_owned_ptr_or_err(py, am_await(awaitable.as_ptr())) }?;
    if is_coroutine_object(&iterator) {
        return Err(PyTypeError::new_err("__await__() returned a coroutine"));
    }
    // SAFETY: GIL held, valid object.
    if unsafe { ffi::PyIter_Check(iterator.as_ptr()) } == 0 {
        let name = iterator
            .get_type()
            .name()
            .map(|name| name.to_string())
            .unwrap_or_default();
        return Err(PyTypeError::new_err(format!(
            "__await__() returned non-iterator of type '{name}'"
        )));
    }
    Ok(iterator)
}

/// A native coroutine, or a generator decorated with `types.coroutine`.
fn is_coroutine_object(object: &Bound<'_, PyAny>) -> bool {
    // SAFETY: GIL held, valid object pointer.
    let native = unsafe { ffi::PyCoro_CheckExact(object.as_ptr()) } != 0;
    native || is_iterable_coroutine(object)
}
