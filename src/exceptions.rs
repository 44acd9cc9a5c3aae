//! The exceptions of awaitlet's public API.

use pyo3::create_exception;
use pyo3::exceptions::{PyBaseException, PyException};

create_exception!(
    awaitlet,
    NoAwaitletContext,
    PyException,
    "awaitlet() was called outside a call stack started by async_def()."
);
create_exception!(
    awaitlet,
    NoAwaitOccurred,
    PyException,
    "async_def(..., assert_await_occurs=True) ran a function that never called awaitlet()."
);
create_exception!(
    greenlet,
    GreenletError,
    PyException,
    "A greenlet operation awaitlet's greenlet facade cannot perform."
);
create_exception!(
    greenlet,
    GreenletExit,
    PyBaseException,
    "Raised in a greenlet to kill it; a greenlet that does not catch it dies quietly."
);
