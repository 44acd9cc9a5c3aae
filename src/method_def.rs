//! Hand-made `PyMethodDef`s, for the functions and methods PyO3's macros cannot make: they
//! take the vectorcall arguments as they are, with no parsing into Rust values.

use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::CStr;

/// A `PyMethodDef` CPython reads through a raw pointer for as long as the function or method
/// made from it exists: a static of this wrapper can be shared.
pub struct MethodDef {
    def: ffi::PyMethodDef,
    /// `def.ml_name`, as Rust sees it.
    name: &'static CStr,
}

// SAFETY: the definition is immutable and only ever read (by CPython, with the GIL held).
unsafe impl Sync for MethodDef {}

impl MethodDef {
    /// A `METH_FASTCALL | METH_KEYWORDS` definition. `meth` is to be one of PyO3's trampolines
    /// (`get_trampoline_function!`): it tells PyO3 the thread is attached (so that references
    /// dropped in the call are released at once, not queued in PyO3's pool) and turns an error
    /// or a panic into a raised exception. `doc`'s first lines give CPython the
    /// `__text_signature__` ("name(sig)\n--\n\n").
    pub const fn fastcall_with_keywords(
        name: &'static CStr,
        meth: ffi::PyCFunctionFastWithKeywords,
        doc: &'static CStr,
    ) -> Self {
        Self {
            def: ffi::PyMethodDef {
                ml_name: name.as_ptr(),
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: meth,
                },
                ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                ml_doc: doc.as_ptr(),
            },
            name,
        }
    }

    /// The pointer CPython's constructors take: `*mut` in their signatures only, they do not
    /// write through it.
    pub fn as_ptr(&'static self) -> *mut ffi::PyMethodDef {
        std::ptr::addr_of!(self.def).cast_mut()
    }
}

/// Makes the function `def` describes, bound to `module` (its `__self__`, with the module's name
/// as its `__module__`), and adds it to `module` under its name; returns it.
pub fn add_static_function<'py>(
    module: &Bound<'py, PyModule>,
    def: &'static MethodDef,
) -> PyResult<Bound<'py, PyAny>> {
    let py = module.py();
    let module_name = module.name()?;
    // SAFETY: GIL held; the definition is a static CPython only reads (the pointer is `*mut` in
    // the signature only); `module` and `module_name` are valid; returns a new reference or
    // NULL with an exception set.
    let function = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCFunction_NewEx(def.as_ptr(), module.as_ptr(), module_name.as_ptr()),
        )
    }?;
    // `add`, not `setattr`: the name goes in the module's `__all__` too.
    module.add(def.name.to_string_lossy(), function.clone())?;
    Ok(function)
}

/// Runs `body` as PyO3's trampolines run a function that CPython calls: with the thread
/// counted as attached by PyO3, so that the Python references dropped in `body` are released
/// at once (outside a trampoline PyO3 may queue them in its pool, to be released whenever it
/// is next entered), and with a panic turned into a raised exception (then None is returned,
/// with the exception set). For code that CPython reached without a trampoline (a fast path)
/// and that leaves its fast path.
pub fn attached<'py, R>(py: Python<'py>, body: impl FnOnce(Python<'py>) -> R) -> Option<R> {
    let mut body = Some(body);
    let mut out = None;
    // The token the trampoline makes is not needed: `py` is.
    let mut run = |_: Python<'_>| {
        if let Some(body) = body.take() {
            out = Some(body(py));
        }
    };
    let mut run: &mut dyn FnMut(Python<'_>) = &mut run;
    // The trampoline of a slot with three object pointers (`__setattr__`'s), the first one
    // carrying `run`.
    let trampoline = pyo3::impl_::trampoline::get_trampoline_function!(setattrofunc, run_attached);
    // SAFETY: GIL held (the token proves it); the first pointer is `run`, alive and not
    // otherwise used for the call, which is all `run_attached` reads; the other two are not
    // read.
    unsafe {
        trampoline(
            std::ptr::addr_of_mut!(run).cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    out
}

/// The body of [`attached`]'s trampoline: calls the closure `run` points to.
///
/// # Safety
/// `run` points to a `&mut dyn FnMut(Python<'_>)`, alive and not otherwise borrowed for the
/// call.
unsafe fn run_attached(
    py: Python<'_>,
    run: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> PyResult<std::ffi::c_int> {
    // SAFETY: guaranteed by the caller.
    let run = unsafe { &mut *run.cast::<&mut dyn FnMut(Python<'_>)>() };
    run(py);
    Ok(0)
}
