//! awaitlet on Rust stacks: the native module `awaitlet._awaitlet`.

mod coroutine;
mod exceptions;
mod fiber;
mod pystate;

use pyo3::prelude::*;

#[pymodule]
fn _awaitlet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    pystate::check_interpreter(py)?;
    m.add_class::<coroutine::AsyncDefCoroutine>()?;
    m.add_class::<coroutine::AsyncDefFunction>()?;
    m.add("async_def", coroutine::AsyncDefFunction)?;
    m.add_function(wrap_pyfunction!(coroutine::awaitlet, m)?)?;
    m.add(
        "NoAwaitletContext",
        py.get_type::<exceptions::NoAwaitletContext>(),
    )?;
    m.add(
        "NoAwaitOccurred",
        py.get_type::<exceptions::NoAwaitOccurred>(),
    )?;
    Ok(())
}
