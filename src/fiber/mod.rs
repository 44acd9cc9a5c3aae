//! Fibers: a Python callable running on its own machine stack.
//!
//! This module is the only user of corosensei. A [`Fiber`] owns a stack and a coroutine that
//! calls a Rust closure (which calls the Python function) on that stack. The resumer calls
//! [`Fiber::resume`]; code running on the fiber calls [`ActiveFiber::suspend`] to hand an
//! awaitable iterator back to the resumer and wait for the value (or exception) to continue
//! with. Every switch swaps the interpreter's per-thread state (see [`crate::pystate`]).
//!
//! ```text
//!   resumer stack                          fiber stack
//!   Fiber::resume(input) --enter state-->  body(py) ... awaitlet(x)
//!                        <--leave state--  ActiveFiber::suspend(iter)
//!   Step::Suspended(iter)
//!   Fiber::resume(value) --enter state-->  ... suspend returns value
//!                        <--finish state-  body returns
//!   Step::Finished(result)
//! ```
//!
//! A fiber is `!Send`: it belongs to the thread that first resumed it, and the caller checks
//! [`Fiber::thread`] against [`current_thread`] before touching it. A suspended fiber is
//! never unwound with a Rust panic (that would unwind through CPython's C frames): the
//! owner finishes it by throwing a Python exception in, and a fiber that cannot be finished
//! is leaked on purpose when dropped.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};

use corosensei::stack::Stack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::pystate::{interpreter_finalizing, FiberPyState};

mod stack_pool;
mod valgrind;

/// Machine stack reserved for each fiber: the size of a thread's default stack, which is
/// what CPython's recursion limits are calibrated for before 3.14 (3.10-3.13 count calls,
/// not bytes), so recursion in sync code raises RecursionError where it would on a thread.
/// It is address space: only the pages a fiber touches become memory.
pub const STACK_SIZE: usize = 8 * 1024 * 1024;

/// What a suspended fiber continues with.
pub enum Resume {
    /// `awaitlet()` returns this value.
    Value(Py<PyAny>),
    /// `awaitlet()` raises this exception.
    Throw(PyErr),
}

/// Where a resumed fiber stopped.
pub enum Step {
    /// It called `awaitlet()` with this awaitable iterator.
    Suspended(Py<PyAny>),
    /// Its function returned or raised.
    Finished(PyResult<Py<PyAny>>),
}

/// Who drives a fiber, which decides what it hands over when it suspends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An `async_def` coroutine: the fiber suspends with an awaitable's iterator.
    AsyncDef,
    /// Greenlet-style `switch()` calls: the fiber suspends with any value.
    Greenlet,
}

/// The greenlet object that stands for a fiber in the greenlet facade.
enum GreenletRef {
    None,
    /// The facade object that owns the fiber (a borrowed pointer, cleared before the owner
    /// goes away).
    Owner(NonNull<ffi::PyObject>),
    /// An object created to stand for a fiber that no greenlet owns (an `async_def`'s).
    Adopted(Py<PyAny>),
}

/// The Python work a fiber runs.
pub type Body = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>>>;

/// The body that calls `func(*args, **kwargs)`.
pub fn call_body(func: Py<PyAny>, args: Py<PyTuple>, kwargs: Option<Py<PyDict>>) -> Body {
    Box::new(move |py| {
        let kwargs = kwargs.as_ref().map(|kwargs| kwargs.bind(py));
        func.bind(py).call(args.bind(py), kwargs).map(Bound::unbind)
    })
}

type Machine = Coroutine<Resume, Py<PyAny>, PyResult<Py<PyAny>>, stack_pool::SlotStack>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    NotStarted,
    Running,
    Suspended,
    Finished,
}

/// What code running on a fiber needs to reach it: shared between the [`Fiber`] handle and
/// the closure on the fiber's stack, at a stable heap address.
struct Shared {
    pystate: FiberPyState,
    yielder: Cell<*const Yielder<Resume, Py<PyAny>>>,
    closing: Cell<bool>,
    kind: Kind,
    /// While the fiber runs: the fiber that resumed it (null: the thread's own stack).
    resumer: Cell<*const Shared>,
    /// What the awaitable the fiber suspends with already yielded, when its first step ran
    /// on the fiber (see [`ActiveFiber::run_as_resumer`]).
    first_yield: Cell<Option<Py<PyAny>>>,
    greenlet: RefCell<GreenletRef>,
}

/// This module's per-thread state, in one thread-local so that a switch looks it up once
/// (from a shared library, every lookup is a call into the dynamic linker).
struct ThreadFibers {
    /// The fiber running on this thread, if any.
    current: Cell<*const Shared>,
    /// This thread's token; 0 until first asked for.
    token: Cell<u64>,
}

impl ThreadFibers {
    fn token(&self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        if self.token.get() == 0 {
            self.token.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        self.token.get()
    }
}

thread_local! {
    static THREAD: ThreadFibers = const {
        ThreadFibers {
            current: Cell::new(ptr::null()),
            token: Cell::new(0),
        }
    };
}

/// A number that identifies the calling thread for the life of the process (thread ids are
/// reused after a thread exits; these tokens are not).
pub fn current_thread() -> u64 {
    THREAD.with(ThreadFibers::token)
}

pub struct Fiber {
    shared: NonNull<Shared>,
    machine: ManuallyDrop<Machine>,
    status: Status,
    thread: u64,
    canary: stack_pool::Canary,
    valgrind_stack: valgrind::StackId,
}

impl Fiber {
    /// Prepares `body` to run on a new stack; it starts at the first [`Fiber::resume`].
    /// Must be called on the thread that will run it.
    pub fn new(py: Python<'_>, kind: Kind, body: Body) -> PyResult<Self> {
        let stack =
            stack_pool::take(STACK_SIZE, crate::pystate::root_chunk_size()).map_err(|err| {
                PyMemoryError::new_err(format!("cannot allocate a fiber stack: {err}"))
            })?;
        let valgrind_stack = valgrind::register(stack.limit().get(), stack.base().get());
        let usable_low = stack.usable_low();
        let canary = stack.canary();
        let usable_size = stack.base().get() - usable_low;
        // SAFETY: the frames area is part of the slot, which this fiber owns until it is
        // given back, after the state is freed; it is page-aligned and root_chunk_size()
        // bytes long.
        let pystate = unsafe {
            FiberPyState::new(
                py,
                usable_low as *mut u8,
                usable_size,
                stack.frames_area() as *mut u8,
            )
        };
        let pystate = match pystate {
            Ok(pystate) => pystate,
            Err(err) => {
                valgrind::deregister(valgrind_stack);
                stack_pool::give_back(stack);
                return Err(err);
            }
        };
        let shared = NonNull::from(Box::leak(Box::new(Shared {
            pystate,
            yielder: Cell::new(ptr::null()),
            closing: Cell::new(false),
            kind,
            resumer: Cell::new(ptr::null()),
            first_yield: Cell::new(None),
            greenlet: RefCell::new(GreenletRef::None),
        })));
        let shared_addr = shared.as_ptr() as usize;
        let machine = Coroutine::with_stack(
            stack,
            move |yielder: &Yielder<Resume, Py<PyAny>>, _start: Resume| {
                // SAFETY: `Shared` is freed only after the machine has finished (or never, when
                // the fiber is leaked), so it outlives this closure.
                let shared = unsafe { &*(shared_addr as *const Shared) };
                shared.yielder.set(yielder);
                // SAFETY: fibers are resumed only by code holding the GIL, and it stays held
                // across the switch onto this stack.
                let py = unsafe { Python::assume_attached() };
                // A panic must not unwind out of this stack: corosensei would carry it through
                // the resumer's CPython frames.
                let result = match catch_unwind(AssertUnwindSafe(|| body(py))) {
                    Ok(result) => result,
                    Err(payload) => Err(panic_to_pyerr(payload)),
                };
                // Finalizers run while the fiber's state is released must not suspend it.
                shared.closing.set(true);
                // SAFETY: on the fiber's stack, GIL held, the function has returned, and the
                // fiber returns right after.
                unsafe { shared.pystate.finish() };
                result
            },
        );
        Ok(Self {
            shared,
            machine: ManuallyDrop::new(machine),
            status: Status::NotStarted,
            thread: current_thread(),
            canary,
            valgrind_stack,
        })
    }

    /// The token of the thread this fiber belongs to.
    pub fn thread(&self) -> u64 {
        self.thread
    }

    pub fn is_suspended(&self) -> bool {
        self.status == Status::Suspended
    }

    /// Whether the owner of this suspended fiber can finish it from here, by throwing an
    /// exception in: it is this thread's, and the interpreter is not shutting down. A fiber
    /// that cannot be finished is leaked when dropped.
    pub fn can_be_finished_here(&self, py: Python<'_>) -> bool {
        self.is_suspended() && self.thread == current_thread() && !interpreter_finalizing(py)
    }

    /// From now on `awaitlet()` in this fiber raises instead of suspending: it is being
    /// closed and must finish.
    pub fn set_closing(&self) {
        self.shared().closing.set(true);
    }

    fn shared(&self) -> &Shared {
        // SAFETY: `shared` is valid for as long as the handle exists (it is freed in Drop).
        unsafe { self.shared.as_ref() }
    }

    /// Runs the fiber until it suspends or finishes.
    ///
    /// The caller has checked that this is the fiber's thread and that it is neither running
    /// nor finished.
    pub fn resume(&mut self, _py: Python<'_>, input: Resume) -> Step {
        let result = THREAD.with(|thread| {
            assert!(
                self.thread == thread.token()
                    && matches!(self.status, Status::NotStarted | Status::Suspended),
                "fiber resumed from the wrong thread or state"
            );
            let previous = thread.current.replace(self.shared.as_ptr());
            self.shared().resumer.set(previous);
            // SAFETY: GIL held (token), on the fiber's thread, it is not running or
            // finished, and the switch onto its stack follows immediately.
            unsafe { self.shared().pystate.enter() };
            self.status = Status::Running;
            let result = self.machine.resume(input);
            thread.current.set(previous);
            result
        });
        if !self.canary.intact() {
            stack_overflow_detected();
        }
        match result {
            CoroutineResult::Yield(awaitable) => {
                self.status = Status::Suspended;
                Step::Suspended(awaitable)
            }
            CoroutineResult::Return(result) => {
                self.status = Status::Finished;
                Step::Finished(result)
            }
        }
    }

    /// What the awaitable the fiber just suspended with has already yielded, if its first
    /// step ran on the fiber.
    pub fn take_first_yield(&self) -> Option<Py<PyAny>> {
        self.shared().first_yield.take()
    }

    /// Records `owner` as the greenlet object that owns this fiber (null to forget it).
    pub fn set_owner_greenlet(&self, owner: *mut ffi::PyObject) {
        *self.shared().greenlet.borrow_mut() = match NonNull::new(owner) {
            Some(owner) => GreenletRef::Owner(owner),
            None => GreenletRef::None,
        };
    }

    /// The context of a fiber that is not running (None: not chosen yet).
    pub fn context<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        assert!(self.status != Status::Running, "context of a running fiber");
        // SAFETY: GIL held (token); the fiber is not running (checked above).
        unsafe { self.shared().pystate.context(py) }
    }

    /// Sets the context of a fiber that is not running.
    ///
    /// # Safety
    /// `context` is a `contextvars.Context` or None.
    pub unsafe fn set_context(&self, context: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.status == Status::Running {
            return Err(PyRuntimeError::new_err(
                "cannot set the context of a running fiber",
            ));
        }
        // SAFETY: GIL held (the Bound proves it); the fiber is not running (checked above);
        // the caller guarantees the type.
        unsafe { self.shared().pystate.set_context(context) };
        Ok(())
    }

    /// The frame object of the innermost Python frame of a suspended fiber.
    pub fn top_frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.status != Status::Suspended || self.thread != current_thread() {
            return Ok(None);
        }
        // SAFETY: GIL held, on the fiber's thread, the fiber is suspended.
        let frame = unsafe { self.shared().pystate.top_frame(py) }?;
        Ok(if frame.is_none() { None } else { Some(frame) })
    }
}

impl Drop for Fiber {
    fn drop(&mut self) {
        match self.status {
            Status::NotStarted | Status::Finished => {
                // SAFETY: taken exactly once, here; the handle is being dropped.
                let machine = unsafe { ManuallyDrop::take(&mut self.machine) };
                // The machine has not started or has returned: nothing on its stack needs
                // unwinding. Taking the stack out drops the closure.
                let stack = machine.into_stack();
                // SAFETY: allocated by Box::leak in `new`; the closure that also pointed to it
                // was dropped just above.
                drop(unsafe { Box::from_raw(self.shared.as_ptr()) });
                // The interpreter state that used the slot's frames area is gone: the slot can
                // serve another fiber.
                valgrind::deregister(self.valgrind_stack);
                stack_pool::give_back(stack);
            }
            // A suspended (or, impossibly, running) fiber still has CPython frames on its
            // stack that only a Python exception can finish; its owner tried that already.
            // Leak the stack, the machine and the shared state rather than unwind them.
            Status::Running | Status::Suspended => {}
        }
    }
}

/// A fiber on this thread's active chain: the running one, or one that (indirectly)
/// resumed it and waits for it.
#[derive(Clone, Copy)]
pub struct ActiveFiber {
    shared: NonNull<Shared>,
}

impl ActiveFiber {
    /// The fiber running on this thread, if the caller runs on one.
    #[inline]
    pub fn running() -> Option<Self> {
        NonNull::new(THREAD.with(|thread| thread.current.get()).cast_mut())
            .map(|shared| Self { shared })
    }

    /// The fiber that resumed this one, if it was not the thread's own stack.
    pub fn resumer(&self) -> Option<Self> {
        NonNull::new(self.shared().resumer.get().cast_mut()).map(|shared| Self { shared })
    }

    fn shared(&self) -> &Shared {
        // SAFETY: an active fiber is running or waits in `Fiber::resume` for the fiber it
        // resumed, so its handle, and with it the shared state, is alive.
        unsafe { self.shared.as_ref() }
    }

    pub fn kind(&self) -> Kind {
        self.shared().kind
    }

    /// The greenlet object standing for this fiber, if it has one.
    pub fn greenlet<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let greenlet = NonNull::new(self.greenlet_ptr())?;
        // SAFETY: an owner clears its pointer before it is deallocated, and an adopted
        // greenlet is kept alive by the fiber: the object is alive.
        Some(unsafe { Bound::from_borrowed_ptr(py, greenlet.as_ptr()) })
    }

    /// The address of the greenlet object standing for this fiber (null if none), to
    /// compare identities without taking a reference.
    pub fn greenlet_ptr(&self) -> *mut ffi::PyObject {
        match &*self.shared().greenlet.borrow() {
            GreenletRef::None => ptr::null_mut(),
            GreenletRef::Owner(owner) => owner.as_ptr(),
            GreenletRef::Adopted(greenlet) => greenlet.as_ptr(),
        }
    }

    /// Makes `greenlet` stand for this fiber, which no greenlet owns.
    pub fn adopt_greenlet(&self, greenlet: Py<PyAny>) -> PyResult<()> {
        let mut slot = self.shared().greenlet.borrow_mut();
        if !matches!(*slot, GreenletRef::None) {
            return Err(PyRuntimeError::new_err("this fiber already has a greenlet"));
        }
        *slot = GreenletRef::Adopted(greenlet);
        Ok(())
    }

    /// Whether the fiber is being closed (or has finished its function).
    pub fn is_closing(&self) -> bool {
        self.shared().closing.get()
    }

    /// Runs `step` on this (running) fiber's stack as if its resumer ran it: with the
    /// resumer's context and handled-exception state, and with no fiber current, so that
    /// `awaitlet()` inside refuses as it would there. Only for fibers resumed by the thread's
    /// own stack.
    pub fn run_as_resumer<R>(&self, step: impl FnOnce() -> R) -> R {
        struct Restore<'a> {
            shared: &'a Shared,
            thread: &'a ThreadFibers,
            previous: *const Shared,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                // SAFETY: pairs the swap below, on the same stack, with no switch between.
                unsafe { self.shared.pystate.swap_resumer_context() };
                self.thread.current.set(self.previous);
            }
        }
        let shared = self.shared();
        debug_assert!(
            shared.resumer.get().is_null(),
            "run_as_resumer with a fiber resumer"
        );
        THREAD.with(|thread| {
            let previous = thread.current.replace(ptr::null());
            // SAFETY: on the fiber's stack while it runs, GIL held; Restore swaps back.
            unsafe { shared.pystate.swap_resumer_context() };
            let _restore = Restore {
                shared,
                thread,
                previous,
            };
            step()
        })
    }

    /// Suspends the fiber after the first step of `awaitable` ran on it and yielded
    /// `yielded`: the resumer hands `yielded` on and delegates to `awaitable` from there.
    pub fn suspend_after_first_step(
        &self,
        py: Python<'_>,
        awaitable: Py<PyAny>,
        yielded: Py<PyAny>,
    ) -> Resume {
        self.shared().first_yield.set(Some(yielded));
        self.suspend(py, awaitable)
    }

    /// Suspends the fiber, handing `awaitable` to its resumer, until it is resumed.
    pub fn suspend(&self, _py: Python<'_>, awaitable: Py<PyAny>) -> Resume {
        let shared = self.shared();
        let yielder = shared.yielder.get();
        if yielder.is_null() {
            return Resume::Throw(PyRuntimeError::new_err("fiber has no resumer"));
        }
        // SAFETY: on the fiber's stack, GIL held (token), the switch follows immediately.
        unsafe { shared.pystate.leave() };
        // SAFETY: the yielder lives on this fiber's stack for as long as its closure runs,
        // which it does: we are in it.
        unsafe { &*yielder }.suspend(awaitable)
    }
}

fn panic_to_pyerr(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else {
        "panic in awaitlet's fiber".to_owned()
    };
    PanicException::new_err(message)
}

/// A fiber wrote past the bottom of its stack slot: memory beyond it may be corrupted, so
/// nothing else may run.
#[cold]
fn stack_overflow_detected() -> ! {
    eprintln!(
        "Fatal error in awaitlet: a fiber overflowed its {} MiB stack (deep recursion in C \
         code beyond CPython's recursion checks); aborting before corrupted memory is used",
        STACK_SIZE / (1024 * 1024)
    );
    std::process::abort()
}
