//! The boundary to `pystate.c`, the only code that knows CPython's private thread-state
//! layout.
//!
//! A [`FiberPyState`] holds, for one fiber, the interpreter state of the fiber while it is
//! suspended and of its resumer while it runs. The three switch functions must be called
//! exactly at the stack switches, in the order `enter` (on the resumer's stack), then
//! `leave` or `finish` (on the fiber's stack), with the GIL held and no Python code running
//! in between.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;

use pyo3::exceptions::PyImportError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{Borrowed, PyTraverseError, PyVisit};

#[repr(C)]
struct RawFiberState {
    _opaque: [u8; 0],
}

extern "C" {
    fn awaitlet_fiber_state_new(
        stack_low: *mut c_void,
        stack_size: usize,
        root_chunk: *mut c_void,
    ) -> *mut RawFiberState;
    fn awaitlet_root_chunk_size() -> usize;
    fn awaitlet_fiber_state_free(state: *mut RawFiberState);
    fn awaitlet_fiber_state_release_abandoned(state: *mut RawFiberState) -> c_int;
    fn awaitlet_enter_fiber(state: *mut RawFiberState) -> c_int;
    fn awaitlet_enter_fiber_unhooked(state: *mut RawFiberState, thread_id: u64) -> c_int;
    fn awaitlet_leave_fiber(
        state: *mut RawFiberState,
        call_args_end: *const *mut ffi::PyObject,
    ) -> c_int;
    fn awaitlet_leave_fiber_unhooked(
        state: *mut RawFiberState,
        call_args_end: *const *mut ffi::PyObject,
        thread_id: u64,
    ) -> c_int;
    fn awaitlet_swap_resumer_context(state: *mut RawFiberState);
    fn awaitlet_swap_resumer_stack_limits(state: *mut RawFiberState);
    fn awaitlet_finish_fiber(state: *mut RawFiberState) -> c_int;
    fn awaitlet_fiber_top_frame(state: *mut RawFiberState) -> *mut ffi::PyObject;
    fn awaitlet_fiber_context(state: *mut RawFiberState) -> *mut ffi::PyObject;
    fn awaitlet_fiber_traverse(
        state: *mut RawFiberState,
        visit: ffi::visitproc,
        arg: *mut c_void,
    ) -> c_int;
    fn awaitlet_fiber_set_context(state: *mut RawFiberState, context: *mut ffi::PyObject);
    fn awaitlet_is_iterable_coroutine(object: *mut ffi::PyObject) -> std::ffi::c_int;
    fn awaitlet_coroutine_origin_tracking_depth() -> std::ffi::c_int;
    fn awaitlet_current_context() -> *mut ffi::PyObject;
    fn awaitlet_set_current_context(context: *mut ffi::PyObject);
    fn awaitlet_check_layout() -> *const c_char;
    fn awaitlet_compiled_python_version() -> std::ffi::c_ulong;
    fn awaitlet_interpreter_finalizing() -> std::ffi::c_int;
    fn awaitlet_switch_hooks_set() -> c_int;
    fn awaitlet_report_suspend(callable: *mut ffi::PyObject) -> c_int;
    fn awaitlet_report_resume(callable: *mut ffi::PyObject) -> c_int;
    fn awaitlet_report_switched_back();
    fn awaitlet_optional_attr(
        object: *mut ffi::PyObject,
        name: *mut ffi::PyObject,
        result: *mut *mut ffi::PyObject,
    ) -> c_int;
    #[cfg(Py_3_13)]
    fn awaitlet_asyncio_running_loop() -> *mut ffi::PyObject;
    #[cfg(Py_3_13)]
    fn awaitlet_set_asyncio_running_loop(event_loop: *mut ffi::PyObject);
}

/// `getattr(object, name)`, or None where that raises AttributeError, which is then not made
/// at all (see `awaitlet_optional_attr` in pystate.c).
pub fn optional_attr<'py>(
    object: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = object.py();
    let mut result = std::ptr::null_mut();
    // SAFETY: GIL held (the references prove it); both objects are alive for the call; on 1
    // `result` holds a new reference, on 0 NULL, on -1 an exception is set.
    match unsafe { awaitlet_optional_attr(object.as_ptr(), name.as_ptr(), &mut result) } {
        // SAFETY: a new reference (see above).
        1 => Ok(Some(unsafe { Bound::from_owned_ptr(py, result) })),
        0 => Ok(None),
        _ => Err(PyErr::fetch(py)),
    }
}

/// asyncio's running loop as the thread state keeps it (3.13+): a borrowed reference, or
/// NULL when none runs.
///
/// # Safety
/// GIL held.
#[cfg(Py_3_13)]
pub unsafe fn asyncio_running_loop() -> *mut ffi::PyObject {
    // SAFETY: GIL held, as the caller guarantees; reads one field of the thread state.
    unsafe { awaitlet_asyncio_running_loop() }
}

/// Sets asyncio's running loop in the thread state (3.13+), as `_set_running_loop()` does;
/// NULL: none.
///
/// # Safety
/// GIL held; `event_loop` is a live object or NULL.
#[cfg(Py_3_13)]
pub unsafe fn set_asyncio_running_loop(event_loop: *mut ffi::PyObject) {
    // SAFETY: as the caller guarantees; the thread state takes a new reference and releases
    // the one it held.
    unsafe { awaitlet_set_asyncio_running_loop(event_loop) }
}

/// Interpreter state owned by one fiber; see the module documentation.
pub struct FiberPyState {
    raw: NonNull<RawFiberState>,
}

impl FiberPyState {
    /// Allocates the state of a fiber that will run on the machine stack
    /// `[stack_low, stack_low + stack_size)`.
    ///
    /// # Safety
    /// `root_chunk` points to [`root_chunk_size`] writable bytes, aligned to 16, that stay
    /// valid and unused by anything else until this state is dropped.
    pub unsafe fn new(
        py: Python<'_>,
        stack_low: *mut u8,
        stack_size: usize,
        root_chunk: *mut u8,
    ) -> PyResult<Self> {
        // SAFETY: the GIL is held (the token proves it) and we are on the thread that will
        // run the fiber; the chunk is valid as the caller guarantees.
        let raw =
            unsafe { awaitlet_fiber_state_new(stack_low.cast(), stack_size, root_chunk.cast()) };
        match NonNull::new(raw) {
            Some(raw) => Ok(Self { raw }),
            None => Err(PyErr::fetch(py)),
        }
    }

    /// Saves the resumer's interpreter state and installs the fiber's. Returns whether switch
    /// hooks are set ([`switch_hooks_set`]), which the fiber needs to know right after the
    /// switch.
    ///
    /// # Safety
    /// GIL held, on the fiber's thread, immediately before switching onto the fiber's stack;
    /// the fiber is not running and has not finished.
    #[inline]
    pub unsafe fn enter(&self) -> bool {
        // SAFETY: guaranteed by the caller.
        unsafe { awaitlet_enter_fiber(self.raw.as_ptr()) != 0 }
    }

    /// [`FiberPyState::enter`] for a switch's fast path, which has nothing to report: only if
    /// the calling thread state's id is `thread` and no switch hooks are set. Returns whether
    /// it entered (else it did nothing).
    ///
    /// # Safety
    /// As for [`FiberPyState::enter`], except that the thread is checked here: `thread` is
    /// the id of the thread state the fiber belongs to.
    #[inline]
    pub unsafe fn enter_unhooked(&self, thread: u64) -> bool {
        // SAFETY: guaranteed by the caller; the thread state is checked on the C side first.
        unsafe { awaitlet_enter_fiber_unhooked(self.raw.as_ptr(), thread) != 0 }
    }

    /// Saves the fiber's interpreter state and reinstalls the resumer's. `call_args_end` is
    /// where the arguments of the call the fiber suspends in end, when Python code made that
    /// call with the vectorcall convention (else null): before 3.14 it is the only record of
    /// which value-stack slots of the innermost frame hold references while it is suspended.
    ///
    /// Returns whether switch hooks are set ([`switch_hooks_set`]), which the resumer needs to
    /// know right after the switch.
    ///
    /// # Safety
    /// GIL held, on the fiber's stack, immediately before suspending it.
    #[inline]
    pub unsafe fn leave(&self, call_args_end: *const *mut ffi::PyObject) -> bool {
        // SAFETY: guaranteed by the caller; the pointer is only compared, never dereferenced,
        // unless it proves to point into the innermost frame's value stack.
        unsafe { awaitlet_leave_fiber(self.raw.as_ptr(), call_args_end) != 0 }
    }

    /// [`FiberPyState::leave`] for a switch's fast path, which has nothing to report: only if
    /// the calling thread state's id is `thread` and no switch hooks are set. Returns whether
    /// it left (else it did nothing).
    ///
    /// # Safety
    /// As for [`FiberPyState::leave`].
    #[inline]
    pub unsafe fn leave_unhooked(
        &self,
        call_args_end: *const *mut ffi::PyObject,
        thread: u64,
    ) -> bool {
        // SAFETY: as for `leave`.
        unsafe { awaitlet_leave_fiber_unhooked(self.raw.as_ptr(), call_args_end, thread) != 0 }
    }

    /// Swaps the running fiber's context and handled-exception state with its resumer's;
    /// calling it again swaps them back.
    ///
    /// # Safety
    /// GIL held, while the fiber runs; the two calls are paired with no switch between them.
    #[inline]
    pub unsafe fn swap_resumer_context(&self) {
        // SAFETY: guaranteed by the caller.
        unsafe { awaitlet_swap_resumer_context(self.raw.as_ptr()) }
    }

    /// Swaps the limits of the machine stack in use that CPython checks between the running
    /// fiber and its resumer; calling it again swaps them back.
    ///
    /// # Safety
    /// GIL held, while the fiber runs, right after moving onto the resumer's machine stack
    /// (below where it waits for the fiber) and right before leaving it; the two calls are
    /// paired with no switch between them.
    #[inline]
    pub unsafe fn swap_resumer_stack_limits(&self) {
        // SAFETY: guaranteed by the caller.
        unsafe { awaitlet_swap_resumer_stack_limits(self.raw.as_ptr()) }
    }

    /// Releases what the finished fiber's interpreter state owns and reinstalls the
    /// resumer's. May run Python code (it drops the fiber's context reference) before the
    /// switch of state. Returns whether switch hooks are set, which the resumer needs to know
    /// right after the switch.
    ///
    /// # Safety
    /// GIL held, on the fiber's stack, after its Python function returned, immediately
    /// before the fiber returns.
    #[inline]
    pub unsafe fn finish(&self) -> bool {
        // SAFETY: guaranteed by the caller.
        unsafe { awaitlet_finish_fiber(self.raw.as_ptr()) != 0 }
    }

    /// Drops the references the saved state of a suspended fiber holds (its context, the
    /// exception it was handling), for a fiber that will never run again. Returns true when
    /// nothing outside the fiber can point into its frames (no frame object was made for any
    /// of them, none is a generator's): its stack slot, frames area included, may then serve
    /// another fiber. What its frames reference is released as far as it is known (3.11+,
    /// unless a generator's frame is among them), which may run Python code.
    ///
    /// # Safety
    /// GIL held; the fiber is suspended and will never be resumed.
    pub unsafe fn release_abandoned(&self) -> bool {
        // SAFETY: guaranteed by the caller.
        unsafe { awaitlet_fiber_state_release_abandoned(self.raw.as_ptr()) != 0 }
    }

    /// The frame object of the suspended fiber's innermost Python frame, if any.
    ///
    /// # Safety
    /// GIL held, on the fiber's thread, while the fiber is suspended (not running).
    pub unsafe fn top_frame<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: guaranteed by the caller; returns a new reference or NULL with an error.
        unsafe { Bound::from_owned_ptr_or_err(py, awaitlet_fiber_top_frame(self.raw.as_ptr())) }
    }

    /// The context the fiber runs in while suspended, or will start in (None: the
    /// resumer's).
    ///
    /// # Safety
    /// GIL held; the fiber is not running.
    pub unsafe fn context<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        // SAFETY: guaranteed by the caller; returns a new reference.
        unsafe { Bound::from_owned_ptr(py, awaitlet_fiber_context(self.raw.as_ptr())) }
    }

    /// Visits, for the cycle collector, the references this state owns: the context of a
    /// fiber that has not started; the context, handled exception and frames' references of
    /// a suspended one.
    ///
    /// # Safety
    /// Called from a `__traverse__`, with the GIL held, while the fiber is not running.
    pub unsafe fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let mut forward = ForwardVisit { visit, error: None };
        // SAFETY: guaranteed by the caller; `forward` outlives the call, and the C side only
        // passes it back to `forward_visit`.
        let status = unsafe {
            awaitlet_fiber_traverse(
                self.raw.as_ptr(),
                forward_visit,
                std::ptr::addr_of_mut!(forward).cast::<c_void>(),
            )
        };
        match forward.error {
            Some(error) => Err(error),
            None => {
                debug_assert_eq!(status, 0);
                Ok(())
            }
        }
    }

    /// Sets the context of a fiber that is not running; `context` is a Context or None.
    ///
    /// # Safety
    /// GIL held; the fiber is not running; `context` is a `contextvars.Context` or None.
    pub unsafe fn set_context(&self, context: &Bound<'_, PyAny>) {
        // SAFETY: guaranteed by the caller.
        unsafe { awaitlet_fiber_set_context(self.raw.as_ptr(), context.as_ptr()) }
    }
}

/// Hands the objects C code visits to a PyO3 `PyVisit`, keeping the first error it returns.
struct ForwardVisit<'a, 'b> {
    visit: &'a PyVisit<'b>,
    error: Option<PyTraverseError>,
}

/// The `visitproc` that forwards to a [`ForwardVisit`]: a nonzero return stops the C
/// traversal, which is then reported as the stored error.
unsafe extern "C" fn forward_visit(object: *mut ffi::PyObject, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ForwardVisit` that `FiberPyState::traverse` passed down, alive and
    // not otherwise borrowed for the duration of the C traversal.
    let forward = unsafe { &mut *arg.cast::<ForwardVisit<'_, '_>>() };
    // SAFETY: the collector runs with the GIL held; the token only wraps the pointer (no
    // Python API is called and no reference count changes), which C passes non-null and valid.
    let object = unsafe { Borrowed::from_ptr(Python::assume_attached(), object) };
    match forward.visit.call(object.as_unbound()) {
        Ok(()) => 0,
        Err(error) => {
            forward.error = Some(error);
            1
        }
    }
}

/// Whether `object` is a generator decorated with `types.coroutine`, which `await` accepts.
pub fn is_iterable_coroutine(object: &Bound<'_, PyAny>) -> bool {
    // SAFETY: GIL held (the Bound proves it), valid object; reads its code's flags only.
    unsafe { awaitlet_is_iterable_coroutine(object.as_ptr()) != 0 }
}

/// `sys.get_coroutine_origin_tracking_depth()`: how many frames of where a coroutine is
/// created its `cr_origin` records.
pub fn coroutine_origin_tracking_depth(_py: Python<'_>) -> usize {
    // SAFETY: GIL held (the token proves it); reads a field of the current thread state.
    let depth = unsafe { awaitlet_coroutine_origin_tracking_depth() };
    usize::try_from(depth).unwrap_or(0)
}

/// The running code's current `contextvars.Context`, or None if none was created yet.
pub fn current_context(py: Python<'_>) -> Bound<'_, PyAny> {
    // SAFETY: GIL held; returns a new reference.
    unsafe { Bound::from_owned_ptr(py, awaitlet_current_context()) }
}

/// Makes `context` (a `contextvars.Context`, checked by the caller, or None) the running
/// code's current context, as greenlet's `gr_context` setter does for the running greenlet.
///
/// # Safety
/// `context` is a `contextvars.Context` or None.
pub unsafe fn set_current_context(context: &Bound<'_, PyAny>) {
    // SAFETY: GIL held (the Bound proves it); the caller checked the type.
    unsafe { awaitlet_set_current_context(context.as_ptr()) }
}

impl Drop for FiberPyState {
    fn drop(&mut self) {
        // SAFETY: the owner drops this only for a fiber that never started or has
        // finished (a suspended fiber is leaked together with its state), with the GIL held.
        unsafe { awaitlet_fiber_state_free(self.raw.as_ptr()) }
    }
}

/// Bytes of memory a fiber's first frames need (0 where frames are heap objects, 3.10).
pub fn root_chunk_size() -> usize {
    // SAFETY: returns a constant.
    unsafe { awaitlet_root_chunk_size() }
}

/// Fails the import when the running interpreter's thread-state layout is not the one the
/// extension was compiled against.
pub fn check_interpreter(py: Python<'_>) -> PyResult<()> {
    // SAFETY: plain function returning a constant.
    let compiled = unsafe { awaitlet_compiled_python_version() } as u32;
    let running: u32 = py.import("sys")?.getattr("hexversion")?.extract()?;
    let version = |hex: u32| format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
    // SAFETY: GIL held; reads fields of the current thread state only.
    let problem = unsafe { awaitlet_check_layout() };
    if !problem.is_null() {
        // SAFETY: the C side returns a static NUL-terminated string.
        let problem = unsafe { CStr::from_ptr(problem) }.to_string_lossy();
        return Err(PyImportError::new_err(format!(
            "awaitlet was built against the headers of CPython {} but runs on CPython {}, \
             whose thread-state layout differs ({problem}); reinstall awaitlet so that it is \
             rebuilt for this interpreter",
            version(compiled),
            version(running)
        )));
    }
    Ok(())
}

/// Whether the interpreter has started finalizing (no fiber is resumed from then on).
pub fn interpreter_finalizing(_py: Python<'_>) -> bool {
    // SAFETY: GIL held (the token proves it); reads a runtime flag.
    unsafe { awaitlet_interpreter_finalizing() != 0 }
}

/// Whether a trace or profile function (or a profiler on `sys.monitoring`) is set on this
/// thread and not running: only then does a switch report anything (see [`report_suspend`]).
/// Cheap enough for every switch.
#[inline]
pub fn switch_hooks_set(_py: Python<'_>) -> bool {
    // SAFETY: GIL held (the token proves it); reads fields of the current thread state.
    unsafe { awaitlet_switch_hooks_set() != 0 }
}

/// Reports to the thread's C-level trace and profile functions, and to a profiler on
/// `sys.monitoring`, that the running fiber suspends, as CPython reports a suspended generator
/// chain: a "return" event (PY_YIELD) for each of its frames, innermost first (after the
/// "c_return" of `callable`, the C function Python code called to suspend, if known, for a
/// profiler). Python-level hooks (`sys.settrace`, `sys.setprofile`) and other monitoring tools
/// are not told (see `pystate.c`). A hook's failure cannot be raised
/// anywhere sensible: it is reported as unraisable.
///
/// # Safety
/// GIL held, on the running fiber's stack, before [`FiberPyState::leave`]; `callable` is null
/// or a valid object.
#[cold]
#[inline(never)]
pub unsafe fn report_suspend(py: Python<'_>, callable: *mut ffi::PyObject) {
    // SAFETY: guaranteed by the caller.
    if unsafe { awaitlet_report_suspend(callable) } < 0 {
        PyErr::fetch(py).write_unraisable(py, None);
    }
}

/// Reports to the same hooks that the running fiber has just been resumed: a "call" event
/// (PY_RESUME) for each of its frames, outermost first (then the "c_call" of `callable`, if
/// known, for a profiler). A hook's failure is returned,
/// to be raised where the fiber resumes, as CPython raises it in a resumed generator.
///
/// # Safety
/// GIL held, on the running fiber's stack, right after it was resumed; `callable` is null or
/// a valid object.
pub unsafe fn report_resume(py: Python<'_>, callable: *mut ffi::PyObject) -> PyResult<()> {
    // SAFETY: guaranteed by the caller.
    if unsafe { awaitlet_report_resume(callable) } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// Tells the thread's C-level trace function, on the resumer's stack, that the fiber it
/// resumed has suspended or finished, so that a tracer keeping a stack per greenlet looks up
/// the current one again (see `pystate.c`).
///
/// # Safety
/// GIL held, on the resumer's stack, right after the fiber switched back to it, with the
/// thread's running fiber already restored.
pub unsafe fn report_switched_back(_py: Python<'_>) {
    // SAFETY: guaranteed by the caller.
    unsafe { awaitlet_report_switched_back() }
}

#[cfg(test)]
pub(crate) mod tests {
    use pyo3::types::PyAnyMethods;

    use super::*;
    use crate::fiber::tests::with_python;

    /// Panics unless the running interpreter is the release whose headers the crate was
    /// compiled against. (Only the embedded one can differ: another libpython of the same
    /// minor version found first by the loader.)
    pub(crate) fn assert_running_the_compiled_release(py: Python<'_>) {
        // SAFETY: returns a constant.
        let compiled = unsafe { awaitlet_compiled_python_version() } as u32;
        let running: u32 = py
            .import("sys")
            .and_then(|sys| sys.getattr("hexversion")?.extract())
            .expect("sys.hexversion");
        let release =
            |hex: u32| format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
        assert_eq!(
            release(running),
            release(compiled),
            "the embedded libpython is not the one of the interpreter the crate was built for \
             (PYO3_PYTHON): put that interpreter's LIBDIR first on LD_LIBRARY_PATH"
        );
    }

    #[test]
    fn the_embedded_interpreter_has_the_layout_the_crate_was_built_for() {
        with_python(|py| {
            check_interpreter(py).unwrap();
            assert!(!interpreter_finalizing(py));
            let minor: u32 = py
                .import("sys")
                .unwrap()
                .getattr("version_info")
                .unwrap()
                .getattr("minor")
                .unwrap()
                .extract()
                .unwrap();
            // Frames live in a data stack from 3.11, and a fiber's first chunk in its slot.
            let size = root_chunk_size();
            if minor >= 11 {
                assert!(size >= 16 * 1024 && size % 4096 == 0, "{size}");
            } else {
                assert_eq!(size, 0);
            }
        });
    }

    #[test]
    fn the_current_context_can_be_read_and_replaced() {
        with_python(|py| {
            let contextvars = py.import("contextvars").unwrap();
            let previous = current_context(py);
            let context = contextvars.getattr("Context").unwrap().call0().unwrap();
            // SAFETY: a contextvars.Context.
            unsafe { set_current_context(&context) };
            assert!(current_context(py).is(&context));
            // Python code sees it as its context.
            let var = contextvars
                .getattr("ContextVar")
                .unwrap()
                .call1(("var",))
                .unwrap();
            var.call_method1("set", (7,)).unwrap();
            assert_eq!(context.get_item(&var).unwrap().extract::<i32>().unwrap(), 7);
            // SAFETY: what was current before: a Context or None.
            unsafe { set_current_context(&previous) };
            assert!(current_context(py).is(&previous));
            assert!(
                var.call_method1("get", (0,))
                    .unwrap()
                    .extract::<i32>()
                    .unwrap()
                    == 0
            );
        });
    }

    #[test]
    fn generator_based_coroutines_are_told_from_other_objects() {
        with_python(|py| {
            let module = pyo3::types::PyModule::from_code(
                py,
                c"import types\n\
                  def plain():\n    yield\n\
                  @types.coroutine\ndef decorated():\n    yield\n\
                  async def native():\n    pass\n",
                c"pystate_tests.py",
                c"pystate_tests",
            )
            .unwrap();
            let make = |name: &str| module.getattr(name).unwrap().call0().unwrap();
            assert!(is_iterable_coroutine(&make("decorated")));
            assert!(!is_iterable_coroutine(&make("plain")));
            let native = make("native");
            assert!(!is_iterable_coroutine(&native));
            native.call_method0("close").unwrap();
            assert!(!is_iterable_coroutine(&py.None().into_bound(py)));
        });
    }

    #[test]
    fn the_coroutine_origin_tracking_depth_is_the_threads() {
        with_python(|py| {
            let sys = py.import("sys").unwrap();
            assert_eq!(coroutine_origin_tracking_depth(py), 0);
            sys.call_method1("set_coroutine_origin_tracking_depth", (5,))
                .unwrap();
            assert_eq!(coroutine_origin_tracking_depth(py), 5);
            sys.call_method1("set_coroutine_origin_tracking_depth", (0,))
                .unwrap();
            assert_eq!(coroutine_origin_tracking_depth(py), 0);
        });
    }
}
