//! The exceptions of awaitlet's public API.

use pyo3::create_exception;
use pyo3::exceptions::{PyBaseException, PyException};

create_exception!(
    awaitlet,
    NoAwaitletContext,
    PyException,
    "Raised by awaitlet() when it is called outside a call stack that async_def() started (or a\n\
greenlet that provides for SQLAlchemy's await_only()): nothing there could await for it."
);
create_exception!(
    awaitlet,
    NoAwaitOccurred,
    PyException,
    "Raised by async_def(fn, ..., assert_await_occurs=True) when fn returned without calling\n\
awaitlet()."
);
create_exception!(
    greenlet,
    GreenletError,
    PyException,
    "greenlet.error: a greenlet operation that failed, or that awaitlet's greenlet facade does\n\
not support (switching to a greenlet other than the running one, its parent or a child)."
);
create_exception!(
    greenlet,
    GreenletExit,
    PyBaseException,
    "Raised in a greenlet to kill it (greenlet.throw() raises it by default); a greenlet that\n\
does not catch it dies quietly, and the switch into it returns the exception."
);
