//! Criterion microbenchmarks of awaitlet's fiber switch, driven from Rust.
//!
//! ```text
//! PYO3_PYTHON=python3.11 cargo bench --features bench --bench switch
//! ```
//!
//! The benchmark embeds the interpreter it was built for: it links libpython, so that
//! interpreter must have been built with a shared library, and when that library is not in a
//! system directory, its directory (`sysconfig.get_config_var("LIBDIR")`) must be on
//! `LD_LIBRARY_PATH` (see `benches/README.md`). It
//! registers this crate's own module init, `PyInit__awaitlet`, as the built-in module
//! `_awaitlet`, so it measures the code of this checkout, not an installed wheel.
//!
//! Through the Python API (always built):
//!
//! * `round_trip/async_def`: one `coro.send(None)` on an `async_def` coroutine whose sync
//!   function loops on `awaitlet(PAUSE)`, where `PAUSE.__await__()` returns an iterator that
//!   yields once: switch onto the fiber's stack, `awaitlet()` suspends it again, the
//!   coroutine delegates to the iterator, which yields back out. Two stack switches, each
//!   with the interpreter-state swap, per iteration.
//! * `round_trip/native`: the same step of a native coroutine looping on `await PAUSE`, the
//!   cost without any stack switch.
//! * `round_trip_generator/{async_def,native}`: the same with `pause()`, a generator-based
//!   coroutine (`@types.coroutine`, like asyncio's own `sleep(0)` helper), which `awaitlet()`
//!   recognizes by its code flags.
//! * `start_finish/async_def`: `async_def(f)` of a function that returns at once, driven to
//!   its end: a fiber taken from the stack pool, its interpreter state set up, one switch in,
//!   one out, and torn down.
//! * `start_finish/native`: the same for a native coroutine that returns at once.
//!
//! Through the engine's private types (`Fiber`, `ActiveFiber`), built only with
//! `RUSTFLAGS="--cfg awaitlet_bench_private"` once the crate re-exports them for benchmarks:
//!
//! * `raw/resume_suspend`: `Fiber::resume` onto a fiber whose body loops on
//!   `ActiveFiber::suspend`: the two switches and state swaps and nothing else.
//! * `raw/new_finish`: `Fiber::calling` of a function that returns at once, resumed to its end.

// `awaitlet_bench_private` is set by hand through RUSTFLAGS, not declared by the package.
#![allow(unexpected_cfgs)]

use std::ffi::CStr;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use pyo3::ffi;
use pyo3::prelude::*;

// Link this crate's library, whose extension module the benchmark imports.
extern crate _awaitlet;

extern "C" {
    /// The extension module's init function (CPython's entry point into it), exported by
    /// `#[pymodule]` in the library.
    fn PyInit__awaitlet() -> *mut ffi::PyObject;
}

/// Python side of the benchmarks.
const SETUP: &CStr = cr#"
import types

from _awaitlet import async_def, awaitlet


ONCE = (None,)


class Pause:
    """Awaitable whose iterator yields once to whoever drives the coroutine."""

    __slots__ = ()

    def __await__(self):
        return iter(ONCE)


PAUSE = Pause()


@types.coroutine
def pause():
    """Yield once to whoever drives the coroutine."""
    yield


def sync_loop():
    while True:
        awaitlet(PAUSE)


async def native_loop():
    while True:
        await PAUSE


def sync_generator_loop():
    while True:
        awaitlet(pause())


async def native_generator_loop():
    while True:
        await pause()


def sync_return():
    return None


async def native_return():
    return None
"#;

/// Starts the interpreter with `_awaitlet` registered as a built-in module.
fn start_python() {
    // SAFETY: called once, before the interpreter is initialized; the name is a static
    // NUL-terminated string and the function is the module's init function.
    let status =
        unsafe { ffi::PyImport_AppendInittab(c"_awaitlet".as_ptr(), Some(PyInit__awaitlet)) };
    assert_eq!(status, 0, "PyImport_AppendInittab failed");
    Python::initialize();
}

/// One step of a coroutine: `coro.send(None)`. Returns whether it yielded (rather than
/// returned).
fn send_none(py: Python<'_>, coro: &Bound<'_, PyAny>) -> PyResult<bool> {
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held (we are attached); both objects are alive for the call; `result`
    // receives a new reference for PYGEN_NEXT and PYGEN_RETURN and stays NULL on error.
    let status = unsafe { ffi::PyIter_Send(coro.as_ptr(), ffi::Py_None(), &mut result) };
    match status {
        ffi::PySendResult::PYGEN_NEXT | ffi::PySendResult::PYGEN_RETURN => {
            // SAFETY: a new reference, see above.
            drop(unsafe { Bound::from_owned_ptr(py, result) });
            Ok(status == ffi::PySendResult::PYGEN_NEXT)
        }
        ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
    }
}

/// Benchmarks one step of `coro`, a started coroutine that suspends forever; closes it.
fn bench_round_trip(c: &mut Criterion, py: Python<'_>, name: &str, coro: Bound<'_, PyAny>) {
    assert!(send_none(py, &coro).expect("start it"), "it must suspend");
    c.bench_function(name, |b| {
        b.iter(|| send_none(py, &coro).expect("resume it"));
    });
    coro.call_method0("close").expect("close it");
}

/// Benchmarks creating a coroutine that returns at once with `create` and running it.
fn bench_start_finish<'py>(
    c: &mut Criterion,
    py: Python<'py>,
    name: &str,
    create: impl Fn() -> PyResult<Bound<'py, PyAny>>,
) {
    c.bench_function(name, |b| {
        b.iter(|| {
            let coro = create().expect("create the coroutine");
            assert!(!send_none(py, &coro).expect("run it"), "it must return");
        });
    });
}

/// The benchmarks through the Python API.
fn python_api(c: &mut Criterion) {
    Python::attach(|py| {
        let module = PyModule::from_code(py, SETUP, c"switch_bench.py", c"switch_bench")
            .expect("benchmark setup code");
        let get = |name: &str| {
            module
                .getattr(name)
                .expect("name defined by the setup code")
        };
        let async_def = get("async_def");
        let version = Python::version_str().split_whitespace().next();
        eprintln!("embedded CPython {}", version.unwrap_or("?"));

        for (group, sync_loop, native_loop) in [
            ("round_trip", "sync_loop", "native_loop"),
            (
                "round_trip_generator",
                "sync_generator_loop",
                "native_generator_loop",
            ),
        ] {
            let coro = async_def.call1((get(sync_loop),)).expect("async_def(loop)");
            bench_round_trip(c, py, &format!("{group}/async_def"), coro);
            let coro = get(native_loop).call0().expect("native loop()");
            bench_round_trip(c, py, &format!("{group}/native"), coro);
        }

        let (sync_return, native_return) = (get("sync_return"), get("native_return"));
        bench_start_finish(c, py, "start_finish/async_def", || {
            async_def.call1((&sync_return,))
        });
        bench_start_finish(c, py, "start_finish/native", || native_return.call0());
    });
}

/// The benchmarks of the engine's own types, without the coroutine object around them.
///
/// Needs the library to re-export them, in `src/lib.rs`:
///
/// ```ignore
/// /// The fiber engine, for `benches/switch.rs`; not a stable API.
/// #[doc(hidden)]
/// pub mod __bench {
///     pub use crate::fiber::{ActiveFiber, Fiber, Kind, Resume, Step};
/// }
/// ```
#[cfg(awaitlet_bench_private)]
fn raw_fiber(c: &mut Criterion) {
    use _awaitlet::__bench::{ActiveFiber, Fiber, Kind, Resume, Step};
    use pyo3::exceptions::PyGeneratorExit;
    use pyo3::types::{PyCFunction, PyTuple};

    Python::attach(|py| {
        // A fiber whose Python function suspends it in a loop, through a native function.
        let suspend = PyCFunction::new_closure(py, None, None, |args, _kwargs| {
            let py = args.py();
            let fiber = ActiveFiber::running().expect("running on a fiber");
            match fiber.suspend(py, py.None()) {
                Resume::Value(value) => Ok::<_, PyErr>(value),
                Resume::Throw(err) => Err(err),
            }
        })
        .expect("suspend function");
        let suspend_forever = py
            .eval(
                c"lambda suspend: [suspend() for _ in iter(int, 1)]",
                None,
                None,
            )
            .expect("loop function");
        let mut fiber = Fiber::calling(
            py,
            Kind::AsyncDef,
            suspend_forever.unbind(),
            PyTuple::new(py, [suspend]).expect("args").unbind(),
            None,
        )
        .expect("Fiber::calling");
        let started = fiber.resume(py, Resume::Value(py.None()));
        assert!(
            matches!(started, Step::Suspended(_)),
            "the fiber must suspend"
        );
        c.bench_function("raw/resume_suspend", |b| {
            b.iter(|| fiber.resume(py, Resume::Value(py.None())));
        });
        let closed = fiber.resume(py, Resume::Throw(PyGeneratorExit::new_err(())));
        assert!(
            matches!(closed, Step::Finished(Err(_))),
            "the fiber must finish"
        );

        c.bench_function("raw/new_finish", |b| {
            b.iter(|| {
                let returns_at_once = py.None().into_bound(py).get_type().into_any();
                let mut fiber = Fiber::calling(
                    py,
                    Kind::AsyncDef,
                    returns_at_once.unbind(),
                    PyTuple::empty(py).unbind(),
                    None,
                )
                .expect("Fiber::calling");
                let step = fiber.resume(py, Resume::Value(py.None()));
                assert!(
                    matches!(step, Step::Finished(Ok(_))),
                    "the fiber must return"
                );
            });
        });
    });
}

#[cfg(not(awaitlet_bench_private))]
fn raw_fiber(_: &mut Criterion) {
    eprintln!(
        "raw/*: skipped; build with RUSTFLAGS=\"--cfg awaitlet_bench_private\" once src/lib.rs \
         re-exports the fiber types (see raw_fiber in benches/switch.rs)"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = python_api, raw_fiber
}

fn main() {
    start_python();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
