//! awaitlet on Rust stacks: the native module `awaitlet._awaitlet`.

mod coroutine;
mod exceptions;
mod fiber;
mod gil_cell;
mod greenlet;
mod method_def;
mod portal;
mod pystate;
mod thread_loop;

use pyo3::prelude::*;

/// The fiber engine, for `benches/switch.rs`; not a stable API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::fiber::{ActiveFiber, Fiber, Kind, Resume, Step};
}

/// Sets the PEP 442 finalizer (`tp_finalize`) of a class PyO3 created: PyO3 has no `__del__`.
///
/// # Safety
/// No instance or subclass of `class` exists yet, and its `tp_finalize` is not otherwise set.
unsafe fn set_finalizer(
    class: &Bound<'_, pyo3::types::PyType>,
    finalize: unsafe extern "C" fn(*mut pyo3::ffi::PyObject),
) {
    // SAFETY: GIL held (the Bound proves it); a heap type whose slot nothing reads until an
    // instance is finalized, with the GIL held; `finalize` has tp_finalize's signature.
    unsafe {
        let class = class.as_type_ptr();
        (*class).tp_finalize = Some(finalize);
        pyo3::ffi::PyType_Modified(class);
    }
}

#[pymodule]
fn _awaitlet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    pystate::check_interpreter(py)?;
    // One version source: the crate's, which maturin also gives the distribution.
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<coroutine::AsyncDefCoroutine>()?;
    coroutine::install_finalizer(py);
    m.add_class::<coroutine::AsyncDefFunction>()?;
    m.add("async_def", coroutine::AsyncDefFunction)?;
    coroutine::add_awaitlet(m)?;
    m.add_function(wrap_pyfunction!(coroutine::call_on_fiber, m)?)?;
    m.add_function(wrap_pyfunction!(coroutine::in_async_def, m)?)?;
    m.add(
        "NoAwaitletContext",
        py.get_type::<exceptions::NoAwaitletContext>(),
    )?;
    m.add(
        "NoAwaitOccurred",
        py.get_type::<exceptions::NoAwaitOccurred>(),
    )?;
    // The greenlet facade, awaitlet.greenlet.
    m.add_class::<greenlet::Greenlet>()?;
    greenlet::install_finalizer(py)?;
    m.add_function(wrap_pyfunction!(greenlet::getcurrent, m)?)?;
    m.add_function(wrap_pyfunction!(greenlet::settrace, m)?)?;
    m.add_function(wrap_pyfunction!(greenlet::gettrace, m)?)?;
    m.add_function(wrap_pyfunction!(greenlet::get_total_main_greenlets, m)?)?;
    m.add_function(wrap_pyfunction!(greenlet::set_thread_local, m)?)?;
    m.add("GreenletExit", py.get_type::<exceptions::GreenletExit>())?;
    m.add("GreenletError", py.get_type::<exceptions::GreenletError>())?;
    // awaitlet.portal's step loop.
    portal::add_to_module(m)?;
    // awaitlet.decorators' await_() with no loop running.
    m.add_function(wrap_pyfunction!(thread_loop::first_step, m)?)?;
    m.add_function(wrap_pyfunction!(thread_loop::wait_for, m)?)?;
    let await_ = wrap_pyfunction!(thread_loop::await_, m)?;
    // Documented and used as awaitlet.decorators.await_.
    await_.setattr("__module__", "awaitlet.decorators")?;
    m.add_function(await_)?;
    m.add_function(wrap_pyfunction!(thread_loop::set_thread_bridge, m)?)?;
    m.add_class::<thread_loop::BridgeState>()?;
    Ok(())
}
