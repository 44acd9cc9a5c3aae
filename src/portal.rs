//! The step loop of `awaitlet.portal`, natively.
//!
//! A task with a portal runs an `async_def()` coroutine whose sync function calls
//! `_portal_drive()` ([`portal_drive_fastcall`]) with the task's original coroutine: it sends each value the task resumes
//! it with into that coroutine (or throws each exception), and hands each value the coroutine
//! yields to the task by suspending the fiber on a [`Handoff`], an awaitable that yields that
//! value once and returns what the task sends back. `await_()` drives the coroutine it waits
//! for the same way, from the sync code below: every step of both runs on the portal's fiber,
//! or, for `await_()` in a greenlet started below it, on that greenlet's (whose hand-offs go
//! to the task through the portal's fiber: see [`crate::greenlet::await_below`]).
//! Python code in `python/awaitlet/portal.py` does everything else.

use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::{PyGeneratorExit, PyRuntimeError, PyStopIteration, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyModule, PyType};
use pyo3::{Borrowed, PyTraverseError, PyVisit};

use crate::coroutine::switch_to_resumer;
use crate::fiber::{ActiveFiber, ArgsEnd, Kind};
use crate::greenlet::{async_def_below, await_below};
use crate::method_def::{add_static_function, MethodDef};

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
enum Step<'py> {
    Yielded(Py<PyAny>),
    Returned(Bound<'py, PyAny>),
}

/// `coro.send(value)`, through `PyIter_Send` (no StopIteration object when it returns).
fn send<'py>(
    py: Python<'py>,
    coro: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Step<'py>> {
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held; both objects are alive for the call; `result` receives a new
    // reference for PYGEN_NEXT and PYGEN_RETURN and stays NULL on error.
    let status = unsafe { ffi::PyIter_Send(coro.as_ptr(), value.as_ptr(), &mut result) };
    if status == ffi::PySendResult::PYGEN_ERROR {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PYGEN_NEXT and PYGEN_RETURN hand over a new reference in `result`.
    let result = unsafe { Bound::from_owned_ptr(py, result) };
    Ok(if status == ffi::PySendResult::PYGEN_NEXT {
        Step::Yielded(result.unbind())
    } else {
        Step::Returned(result)
    })
}

/// `coro.throw(error)`.
fn throw<'py>(py: Python<'py>, coro: &Bound<'py, PyAny>, error: PyErr) -> PyResult<Step<'py>> {
    match coro.call_method1(pyo3::intern!(py, "throw"), (error.into_value(py),)) {
        Ok(yielded) => Ok(Step::Yielded(yielded.unbind())),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => {
            let value = err.value(py).getattr(pyo3::intern!(py, "value"))?;
            Ok(Step::Returned(value))
        }
        Err(err) => Err(err),
    }
}

/// `_portal_drive(coro, value, exception, detach)`: run `coro` to its end from the fiber of
/// an `async_def()` coroutine, starting by sending `value` (or throwing `exception`, if not
/// None), handing each value it yields to the task that awaits that coroutine; return what
/// `coro` returns or raise what it raises. An exception the task throws in goes into `coro`,
/// except an instance of `detach` (raised at once, `coro` left as it is) and `GeneratorExit`
/// (the portal is being closed: `coro` is closed, then it is raised).
///
/// Defined by hand (`METH_FASTCALL`) for the address of its arguments, as `awaitlet()` is:
/// they stay on the calling frame's value stack, where the collector is shown them while the
/// fiber is suspended (see `ArgsEnd`); and no reference of ours is held across a suspension
/// (a Rust local there is one the collector cannot see), but the empty hand-off's.
///
/// # Safety
/// Called through PyO3's trampoline, with the arguments CPython passes to such a function.
unsafe fn portal_drive_fastcall(
    py: Python<'_>,
    _module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: `kwnames` is NULL or a tuple, valid for the call.
    let has_keywords = !kwnames.is_null() && unsafe { ffi::PyTuple_GET_SIZE(kwnames) } != 0;
    if nargs != 4 || has_keywords {
        return Err(PyTypeError::new_err(
            "_portal_drive() takes exactly 4 positional arguments",
        ));
    }
    // SAFETY: CPython passes `nargs` (4) valid arguments at `args`, alive for the call.
    let [coro, value, exception, detach] =
        [0, 1, 2, 3].map(|index| unsafe { Borrowed::from_ptr(py, *args.add(index)) });
    let call = ArgsEnd::of(args, 4).with_callable(PORTAL_DRIVE_FUNCTION.load(Ordering::Relaxed));
    let mut sent: Option<Bound<'_, PyAny>> = None;
    let mut thrown = (!exception.is_none()).then(|| PyErr::from_value(exception.to_owned()));
    let mut first = true;
    loop {
        let step = match thrown.take() {
            Some(error) => throw(py, &coro, error)?,
            None if first => send(py, &coro, &value)?,
            // Dropped as soon as it is sent: see above.
            None => send(
                py,
                &coro,
                &sent.take().unwrap_or_else(|| py.None().into_bound(py)),
            )?,
        };
        first = false;
        let yielded = match step {
            Step::Yielded(yielded) => yielded,
            Step::Returned(result) => return Ok(result.into_ptr()),
        };
        let fiber = match ActiveFiber::running() {
            Some(fiber) if fiber.kind() == Kind::AsyncDef || async_def_below(fiber) => fiber,
            _ => {
                // Nothing was awaited, and the awaitable will not be resumed.
                coro.call_method0(pyo3::intern!(py, "close"))?;
                return Err(PyRuntimeError::new_err(
                    "awaitlet.portal.await_() cannot suspend here: it does not run below the \
                     task's portal",
                ));
            }
        };
        let handoff = Handoff {
            value: Some(yielded),
        };
        let resumed = match fiber.kind() {
            Kind::AsyncDef => switch_to_resumer(py, fiber, Bound::new(py, handoff)?.as_any(), call),
            // In a greenlet started below the portal: the portal's fiber hands the value over
            // and the task's answer comes back here (greenback's behaviour).
            Kind::Greenlet => {
                let handoff = Py::new(py, handoff)?.into_any();
                await_below(py, fiber, handoff, call)
            }
        };
        match resumed {
            Ok(value) => sent = Some(value.into_bound(py)),
            Err(err) if err.is_instance_of::<PyGeneratorExit>(py) => {
                // A no-op if the collector closed `coro` first.
                coro.call_method0(pyo3::intern!(py, "close"))?;
                return Err(err);
            }
            Err(err) if err.is_instance(py, &detach) => return Err(err),
            Err(err) => thrown = Some(err),
        }
    }
}

static PORTAL_DRIVE_DEF: MethodDef = MethodDef::fastcall_with_keywords(
    c"_portal_drive",
    pyo3::impl_::trampoline::get_trampoline_function!(
        fastcall_cfunction_with_keywords,
        portal_drive_fastcall
    ),
    c"_portal_drive(coro, value, exception, detach)
--

Run ``coro`` to its end from an ``async_def()`` fiber, handing what it yields to the task
that awaits that fiber's coroutine (awaitlet.portal's step loop).",
);

/// The `_portal_drive()` function object (null until the module is initialized).
static PORTAL_DRIVE_FUNCTION: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Adds `_portal_drive()` and its hand-off class to `module`.
pub fn add_to_module(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Handoff>()?;
    module.add_class::<TaskCoroField>()?;
    let function = add_static_function(module, &PORTAL_DRIVE_DEF)?;
    // Kept for good (the module keeps it anyway): profile functions are told about calls of
    // it at switches (see `ArgsEnd::with_callable`).
    PORTAL_DRIVE_FUNCTION.store(function.into_ptr(), Ordering::Relaxed);
    Ok(())
}

/// Where asyncio's C `Task` keeps its coroutine: its `task_coro` field, private to
/// `Modules/_asynciomodule.c` (in no header), so not known from a layout but found once,
/// against a Task made for the purpose, as the one pointer-sized word of the object that
/// points to the Task's known coroutine (see `awaitlet.portal._CTaskCoroField`).
#[pyclass(frozen, module = "awaitlet._awaitlet", name = "_TaskCoroField")]
pub struct TaskCoroField {
    /// The Task type the offset was found in: it holds for that type and its subclasses.
    task_type: Py<PyType>,
    /// The field's offset from the start of the object.
    offset: usize,
}

const WORD: usize = std::mem::size_of::<*mut ffi::PyObject>();

/// The object's basic size, as its type states it (`__basicsize__`).
fn basic_size(object: &Bound<'_, PyAny>) -> usize {
    // SAFETY: GIL held; an object's type is a live type object, whose `tp_basicsize` is a
    // plain field of the public (non-limited) PyTypeObject.
    let size = unsafe { (*ffi::Py_TYPE(object.as_ptr())).tp_basicsize };
    usize::try_from(size).unwrap_or(0)
}

/// Where the word at `offset` in `object` is (computing it reads nothing).
fn word_address(object: &Bound<'_, PyAny>, offset: usize) -> *mut *mut ffi::PyObject {
    object
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(offset)
        .cast::<*mut ffi::PyObject>()
}

/// The word at `offset` in `object`, as an address.
///
/// # Safety
/// `offset` is pointer-aligned and `offset + WORD` is within the object's basic size.
unsafe fn word_at(object: &Bound<'_, PyAny>, offset: usize) -> usize {
    // SAFETY: the object occupies at least its basic size from its address, and objects
    // are pointer-aligned, so this word is inside it and aligned (the caller's promise). The
    // memory was allocated and filled by C code; a word may be padding of asyncio's struct,
    // so it is read volatile, as an opaque integer that is only compared.
    unsafe { word_address(object, offset).cast::<usize>().read_volatile() }
}

#[pymethods]
impl TaskCoroField {
    /// Finds the field in `task`, a Task (of a type implemented in C) created with `coro`
    /// that has not run: the one word past the object header that points to `coro`.
    ///
    /// Raises RuntimeError if `coro`'s address occurs in the object other than exactly once.
    #[new]
    #[pyo3(signature = (task, coro, /))]
    fn locate(task: &Bound<'_, PyAny>, coro: &Bound<'_, PyAny>) -> PyResult<Self> {
        let header = std::mem::size_of::<ffi::PyObject>();
        let size = basic_size(task);
        let found: Vec<usize> = (header..size.saturating_sub(WORD - 1))
            .step_by(WORD)
            // SAFETY: `offset` is a multiple of the word size (the header is a whole
            // number of words) and `offset + WORD <= size`.
            .filter(|&offset| unsafe { word_at(task, offset) } == coro.as_ptr() as usize)
            .collect();
        match found.as_slice() {
            [offset] => Ok(Self {
                task_type: task.get_type().unbind(),
                offset: *offset,
            }),
            _ => Err(PyRuntimeError::new_err(format!(
                "the Task's coroutine pointer occurs {} times in the Task object",
                found.len()
            ))),
        }
    }

    /// The field's offset in the object.
    #[getter]
    fn offset(&self) -> usize {
        self.offset
    }

    /// Makes `task` (an instance of the Task type the field was found in, or of a subclass)
    /// hold `new` in the field instead of `old`, which the field must hold, and which the
    /// caller must keep a reference to (so that dropping the field's runs no finalizer).
    #[pyo3(signature = (task, old, new, /))]
    fn replace(
        &self,
        task: &Bound<'_, PyAny>,
        old: &Bound<'_, PyAny>,
        new: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = task.py();
        if !task.get_type().is_subclass(self.task_type.bind(py))? {
            return Err(PyTypeError::new_err(format!(
                "expected a {} (or a subclass), not {}",
                self.task_type.bind(py).qualname()?,
                task.get_type().qualname()?
            )));
        }
        // A subclass's instances start with the base's layout, as long as the base's.
        debug_assert!(self.offset + WORD <= basic_size(task));
        // SAFETY: `task` is an instance of the type (or a subclass of it) in whose basic size
        // `locate` found this aligned offset.
        if unsafe { word_at(task, self.offset) } != old.as_ptr() as usize {
            return Err(PyRuntimeError::new_err(
                "cannot give this asyncio Task a portal: its coroutine field is not where it was",
            ));
        }
        // SAFETY: as above, the word is the Task's coroutine field, which owns a reference:
        // it takes a new one to `new` and gives up its own to `old` (not the last: the caller
        // holds one, so no finalizer runs here). GIL held throughout.
        unsafe {
            word_address(task, self.offset).write(new.clone().into_ptr());
            ffi::Py_DECREF(old.as_ptr());
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.task_type)
    }
}
