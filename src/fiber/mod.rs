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
//!   Fiber::resume(input) --enter state-->  call.run(py) ... awaitlet(x)
//!                        <--leave state--  ActiveFiber::suspend(iter)
//!   Step::Suspended(iter)
//!   Fiber::resume(value) --enter state-->  ... suspend returns value
//!                        <--finish state-  call returns
//!   Step::Finished(result)
//! ```
//!
//! A fiber is `!Send`: it belongs to the thread state that created it (see [`owner`]), and
//! the caller checks [`Fiber::thread`] against [`current_thread`] before touching it. A
//! suspended fiber is never unwound with a Rust panic (that would unwind through CPython's C
//! frames): the owner finishes it by throwing a Python exception in; one dropped where it
//! cannot be finished goes to its owner as an orphan.

use std::alloc::{alloc, Layout};
use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use corosensei::stack::Stack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use pyo3::exceptions::{PyGeneratorExit, PyRuntimeError, PyRuntimeWarning};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::exceptions::GreenletExit;
use crate::method_def::attached;
use crate::pystate::{
    interpreter_finalizing, report_resume, report_suspend, report_switched_back, switch_hooks_set,
    FiberPyState,
};

pub mod owner;
mod stack_pool;
#[cfg(test)]
pub(crate) mod tests;
mod valgrind;

use owner::FiberOwner;

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

impl Resume {
    /// What the call the fiber suspended in returns (or raises).
    pub fn into_result(self) -> PyResult<Py<PyAny>> {
        match self {
            Self::Value(value) => Ok(value),
            Self::Throw(err) => Err(err),
        }
    }
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

/// A call as `stack_root.c` makes it: `PyObject_Vectorcall` when `vector` is set, else
/// `PyObject_Call`.
#[repr(C)]
struct RootCall {
    callable: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
    vector: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
}

extern "C" {
    /// Makes `call` through a frame that unwinders take for the bottom of the stack.
    fn awaitlet_call_at_stack_root(call: *const RootCall) -> *mut ffi::PyObject;
    /// The function and instance (borrowed) of a bound method object, else NULLs.
    fn awaitlet_bound_method_parts(
        callable: *mut ffi::PyObject,
        function: *mut *mut ffi::PyObject,
        instance: *mut *mut ffi::PyObject,
    );
}

/// The call a fiber makes ([`Fiber::calling`]), kept in [`Shared`] until it returns rather
/// than in the locals of a closure on the fiber's stack: CPython borrows the callable and the
/// arguments from here for the whole call, so while the fiber is suspended they are references
/// the fiber holds, which the collector must be shown ([`Fiber::traverse`]) or whatever they
/// reach would look referenced from outside, and cycles through it could never be collected.
struct Call {
    func: Py<PyAny>,
    args: CallArgs,
}

enum CallArgs {
    /// `func(*args, **kwargs)` through `PyObject_Call`, which passes a vectorcall callable the
    /// tuple's items in place, and any other callable the tuple and dict themselves.
    Tuple {
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    },
    /// The arguments for a vectorcall callable, laid out as vectorcall takes them (positional
    /// values, then keyword values named by `kwnames`): for keyword arguments, which
    /// `PyObject_Call` would copy into an array of new references of its own, out of the
    /// collector's sight, and for a bound method's function, with the instance first.
    Vector {
        values: Vec<Py<PyAny>>,
        positional: usize,
        /// None without keyword arguments.
        kwnames: Option<Py<PyTuple>>,
    },
}

impl Call {
    fn new(
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    ) -> PyResult<Self> {
        let kwargs = kwargs.filter(|kwargs| !kwargs.bind(py).is_empty());
        let (mut function, mut instance) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: GIL held, valid object; the parts are borrowed from it.
        unsafe { awaitlet_bound_method_parts(func.as_ptr(), &mut function, &mut instance) };
        // SAFETY: GIL held; `function` is null or a valid object.
        if !function.is_null() && unsafe { ffi::PyVectorcall_Function(function) }.is_some() {
            // A bound method is called as its function with the instance first, as the
            // method object itself would call it, without the method object's C frame on the
            // fiber's stack (144 bytes on 3.11, in the pages a suspended fiber keeps).
            // SAFETY: GIL held; both parts are valid objects, kept alive by the method for
            // the moment and by the new references from then on.
            let (function, instance) = unsafe {
                (
                    Bound::from_borrowed_ptr(py, function).unbind(),
                    Bound::from_borrowed_ptr(py, instance).unbind(),
                )
            };
            let args = args.bind(py);
            let names_are_strings = kwargs.as_ref().is_none_or(|kwargs| {
                kwargs
                    .bind(py)
                    .keys()
                    .iter()
                    .all(|name| name.is_instance_of::<PyString>())
            });
            if names_are_strings {
                return Self::vector(py, function, Some(instance), args, kwargs.as_ref());
            }
        }
        // SAFETY: GIL held, valid object; reads its type's vectorcall slot.
        let vectorcall = unsafe { ffi::PyVectorcall_Function(func.as_ptr()) }.is_some();
        let names_are_strings = |kwargs: &Py<PyDict>| {
            kwargs
                .bind(py)
                .keys()
                .iter()
                .all(|name| name.is_instance_of::<PyString>())
        };
        let args = match kwargs {
            // (Keys that are not strings are left to PyObject_Call to refuse.)
            Some(kwargs) if vectorcall && names_are_strings(&kwargs) => {
                return Self::vector(py, func, None, args.bind(py), Some(&kwargs));
            }
            kwargs => CallArgs::Tuple { args, kwargs },
        };
        Ok(Self { func, args })
    }

    /// `func(first, *args, **kwargs)` (without `first` when None) with the arguments laid out
    /// for vectorcall; `kwargs`' keys are strings.
    fn vector(
        py: Python<'_>,
        func: Py<PyAny>,
        first: Option<Py<PyAny>>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Py<PyDict>>,
    ) -> PyResult<Self> {
        let kwargs = kwargs.map(|kwargs| kwargs.bind(py));
        let keywords = kwargs.map_or(0, |kwargs| kwargs.len());
        let positional = usize::from(first.is_some()) + args.len();
        // Out of memory is a MemoryError, not an abort.
        let mut values: Vec<Py<PyAny>> = Vec::new();
        let mut names = Vec::new();
        if values.try_reserve_exact(positional + keywords).is_err()
            || names.try_reserve_exact(keywords).is_err()
        {
            return Err(no_memory(py));
        }
        values.extend(first);
        values.extend(args.iter().map(Bound::unbind));
        for (name, value) in kwargs.iter().flat_map(|kwargs| kwargs.iter()) {
            names.push(name);
            values.push(value.unbind());
        }
        let kwnames = if names.is_empty() {
            None
        } else {
            Some(PyTuple::new(py, names)?.unbind())
        };
        Ok(Self {
            func,
            args: CallArgs::Vector {
                values,
                positional,
                kwnames,
            },
        })
    }

    /// Makes the call through the fiber stack's bottom frame for unwinders (see
    /// `stack_root.c`): a new reference, or NULL with an exception set.
    #[inline(never)]
    fn invoke(&self) -> *mut ffi::PyObject {
        let mut root = RootCall {
            callable: self.func.as_ptr(),
            args: ptr::null_mut(),
            kwargs: ptr::null_mut(),
            vector: ptr::null(),
            nargsf: 0,
            kwnames: ptr::null_mut(),
        };
        match &self.args {
            CallArgs::Tuple { args, kwargs } => {
                root.args = args.as_ptr();
                root.kwargs = kwargs.as_ref().map_or(ptr::null_mut(), Py::as_ptr);
            }
            CallArgs::Vector {
                values,
                positional,
                kwnames,
            } => {
                // `Py` is a transparent object pointer: the values are the argument array.
                root.vector = values.as_ptr().cast();
                root.nargsf = *positional;
                root.kwnames = kwnames.as_ref().map_or(ptr::null_mut(), Py::as_ptr);
            }
        }
        // SAFETY: GIL held (by the fiber's caller); the objects (and the argument array, with
        // as many keyword values after the positional ones as `kwnames` has names) are kept by
        // `self` for the whole call; returns a new reference or NULL with an exception set.
        unsafe { awaitlet_call_at_stack_root(&root) }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        match &self.args {
            CallArgs::Tuple { args, kwargs } => {
                visit.call(args)?;
                visit.call(kwargs)
            }
            CallArgs::Vector {
                values, kwnames, ..
            } => {
                for value in values {
                    visit.call(value)?;
                }
                visit.call(kwnames)
            }
        }
    }
}

/// The call a fiber suspends in, as far as it is known: where its arguments end, when Python
/// code made that call with the vectorcall convention (see [`FiberPyState::leave`]), and the C
/// function called, which profile functions were told about (see
/// [`crate::pystate::report_suspend`]).
#[derive(Clone, Copy)]
pub struct ArgsEnd {
    end: *const *mut ffi::PyObject,
    callable: *mut ffi::PyObject,
}

impl ArgsEnd {
    /// The call was not made from Python code, or its arguments are not known.
    pub const UNKNOWN: Self = Self {
        end: ptr::null(),
        callable: ptr::null_mut(),
    };

    /// The end of the `count` arguments at `args`. Only an address: it is compared with the
    /// innermost frame's value stack, and dereferenced only if it lies in it.
    pub fn of(args: *const *mut ffi::PyObject, count: usize) -> Self {
        Self {
            end: args.wrapping_add(count),
            callable: ptr::null_mut(),
        }
    }

    /// The same, for a call of `callable`, a C function object (`PyCFunction`) that stays
    /// alive until the fiber is resumed.
    pub fn with_callable(self, callable: *mut ffi::PyObject) -> Self {
        Self { callable, ..self }
    }
}

/// A fiber's function returns an [`Outcome`] rather than a `PyResult` (which the resumer
/// makes of it): corosensei keeps room for it in the fiber's bottom frame.
type Machine = Coroutine<Resume, Py<PyAny>, Outcome, stack_pool::SlotStack>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    NotStarted,
    Running,
    Suspended,
    Finished,
    /// Suspended, and handed to its owner as an [`Orphan`]: the handle no longer has it.
    Orphaned,
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
    /// before the switch (see [`ActiveFiber::run_as_resumer`]).
    first_yield: Cell<Option<Py<PyAny>>>,
    /// What the fiber's code keeps across its suspension (see [`ActiveFiber::hold`]).
    held: Cell<Option<Py<PyAny>>>,
    greenlet: RefCell<GreenletRef>,
    /// The call the fiber makes, until it returns (see [`Call`]).
    call: RefCell<Option<Call>>,
    /// A greenlet's context when its function returned (greenlet's `gr_context` of a dead
    /// greenlet).
    final_context: Cell<Option<Py<PyAny>>>,
    /// Start with no context rather than the resumer's (greenlet's new greenlets).
    start_without_context: Cell<bool>,
    /// Whether switch hooks were set ([`switch_hooks_set`]) at the last switch onto or off
    /// this fiber's stack, as the side that switched saw it: the other side reads it right
    /// after the switch (nothing runs in between) instead of asking again.
    hooks_set: Cell<bool>,
}

impl Shared {
    /// Visits the references of the call the fiber makes, if it has not returned.
    fn traverse_call(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.call.try_borrow().ok().as_deref() {
            Some(Some(call)) => call.traverse(visit),
            _ => Ok(()),
        }
    }

    /// Makes the call stored in `self.call`, which keeps its references until it returns:
    /// what the call returned (a new reference, or NULL with an exception set), None if there
    /// is no call to make. Drops nothing (see [`fiber_main`]).
    fn run_call(&self) -> Option<*mut ffi::PyObject> {
        self.call.borrow().as_ref().map(Call::invoke)
    }

    /// What [`Shared::run_call`] (or a panic in it) came to, once the call's references are
    /// released.
    fn end_call(&self, py: Python<'_>, returned: CallReturn) -> Outcome {
        let outcome = match returned {
            Ok(Some(result)) => NonNull::new(result).ok_or_else(|| fetch_exception(py)),
            Ok(None) => Err(no_call().into_value(py)),
            Err(payload) => panic_outcome(py, payload),
        };
        self.drop_call();
        outcome
    }

    /// Releases the call's references, outside any borrow: dropping them can run any code.
    #[inline(never)]
    fn drop_call(&self) {
        let call = self.call.borrow_mut().take();
        drop(call);
    }
}

/// This module's per-thread state, in one thread-local so that a switch looks it up once
/// (from a shared library, every lookup is a call into the dynamic linker).
struct ThreadFibers {
    /// The fiber running on this thread, if any.
    current: Cell<*const Shared>,
    /// The thread state whose fiber owner is cached below (0: none).
    owner_id: Cell<u64>,
    /// That thread state's [`FiberOwner`] (borrowed: its thread state's dict keeps it).
    owner: Cell<*mut ffi::PyObject>,
}

thread_local! {
    static THREAD: ThreadFibers = const {
        ThreadFibers {
            current: Cell::new(ptr::null()),
            owner_id: Cell::new(0),
            owner: Cell::new(ptr::null_mut()),
        }
    };
}

/// Identifies the calling thread state for the life of the process: what a fiber belongs to.
pub fn current_thread() -> u64 {
    owner::current_thread_state_id()
}

pub struct Fiber {
    shared: NonNull<Shared>,
    machine: ManuallyDrop<Machine>,
    status: Status,
    owner: Py<FiberOwner>,
    canary: stack_pool::Canary,
    valgrind_stack: valgrind::StackId,
}

/// A suspended fiber dropped where it could not be finished, on its way to its owner, which
/// finishes it (or retires it, once the owner's thread state is gone).
pub struct Orphan {
    shared: NonNull<Shared>,
    /// Never dropped: dropping a suspended machine would unwind its stack with a panic.
    machine: ManuallyDrop<Machine>,
    canary: stack_pool::Canary,
    valgrind_stack: valgrind::StackId,
    /// The iterator its coroutine was delegating to, to close first.
    awaiting: Option<Py<PyAny>>,
}

impl Fiber {
    /// Prepares `func(*args, **kwargs)` to run on a new stack; it starts at the first
    /// [`Fiber::resume`]. Must be called on the thread that will run it.
    pub fn calling(
        py: Python<'_>,
        kind: Kind,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    ) -> PyResult<Self> {
        let owner = owner::current_owner(py)?;
        if owner.get().has_orphans() {
            FiberOwner::finish_orphans(&owner, py);
        }
        let call = Call::new(py, func, args, kwargs)?;
        // Out of memory is a MemoryError, raised without allocating anything more.
        let Ok(stack) = stack_pool::take(crate::pystate::root_chunk_size()) else {
            return Err(no_memory(py));
        };
        if let Some(message) = stack_pool::take_warning() {
            let message = CString::new(message).expect("no NUL in the pool's messages");
            let category = py.get_type::<PyRuntimeWarning>();
            if let Err(err) = PyErr::warn(py, &category, &message, 1) {
                stack_pool::give_back(stack);
                return Err(err);
            }
        }
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
        // Allocated as a Box would be (it is freed as one), but failing with MemoryError.
        // SAFETY: `Shared` is not zero-sized.
        let Some(shared) = NonNull::new(unsafe { alloc(Layout::new::<Shared>()) }.cast::<Shared>())
        else {
            drop(pystate);
            valgrind::deregister(valgrind_stack);
            stack_pool::give_back(stack);
            return Err(no_memory(py));
        };
        // SAFETY: freshly allocated, properly sized and aligned for a `Shared`.
        unsafe {
            shared.as_ptr().write(Shared {
                pystate,
                yielder: Cell::new(ptr::null()),
                closing: Cell::new(false),
                kind,
                resumer: Cell::new(ptr::null()),
                first_yield: Cell::new(None),
                held: Cell::new(None),
                greenlet: RefCell::new(GreenletRef::None),
                call: RefCell::new(Some(call)),
                final_context: Cell::new(None),
                start_without_context: Cell::new(false),
                hooks_set: Cell::new(false),
            })
        };
        let shared_addr = shared.as_ptr() as usize;
        let machine = Coroutine::with_stack(
            stack,
            move |yielder: &Yielder<Resume, Py<PyAny>>, start: Resume| {
                // SAFETY: `Shared` is freed only after the machine has finished (or never, when
                // the fiber is leaked), so it outlives this closure.
                let shared = unsafe { &*(shared_addr as *const Shared) };
                fiber_main(shared, yielder, start)
            },
        );
        Ok(Self {
            shared,
            machine: ManuallyDrop::new(machine),
            status: Status::NotStarted,
            owner,
            canary,
            valgrind_stack,
        })
    }

    /// The id of the thread state this fiber belongs to.
    pub fn thread(&self) -> u64 {
        self.owner.get().thread_state()
    }

    pub fn is_suspended(&self) -> bool {
        self.status == Status::Suspended
    }

    /// Whether the owner of this suspended fiber can finish it from here, by throwing an
    /// exception in: it is this thread's, and the interpreter is not shutting down. A fiber
    /// that cannot be finished is leaked when dropped.
    pub fn can_be_finished_here(&self, py: Python<'_>) -> bool {
        self.is_suspended()
            && self.thread() == current_thread()
            && self.owner.get().is_alive()
            && !interpreter_finalizing(py)
    }

    /// The owner of this fiber (its thread state's).
    pub fn owner(&self) -> &Py<FiberOwner> {
        &self.owner
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
    pub fn resume(&mut self, py: Python<'_>, input: Resume) -> Step {
        assert!(
            self.thread() == current_thread()
                && matches!(self.status, Status::NotStarted | Status::Suspended),
            "fiber resumed from the wrong thread state or in the wrong state"
        );
        if self.owner.get().has_orphans() {
            FiberOwner::finish_orphans(&self.owner, py);
        }
        // SAFETY: GIL held (token), on the fiber's thread, it is not running or finished
        // (checked above), and the switch onto its stack follows immediately.
        let hooks = unsafe { self.shared().pystate.enter() };
        self.shared().hooks_set.set(hooks);
        self.run_entered(py, input)
    }

    /// [`Fiber::resume`] for a switch's fast path, which has nothing to report: only if the
    /// fiber belongs to the calling thread state and no switch hooks are set; else it does
    /// nothing and hands `input` back. Drops no Python reference (a fast path may run where
    /// PyO3 does not count the thread as attached).
    ///
    /// # Safety
    /// GIL held (the token); the fiber is suspended; its owner has no orphans waiting
    /// ([`FiberOwner::has_orphans`]), which `resume` would finish first.
    #[inline]
    pub unsafe fn resume_unhooked(
        &mut self,
        py: Python<'_>,
        input: Resume,
    ) -> Result<Step, Resume> {
        // SAFETY: GIL held and the fiber suspended (guaranteed by the caller); it enters only
        // on the fiber's thread state, and the switch onto its stack follows immediately.
        if !unsafe { self.shared().pystate.enter_unhooked(self.thread()) } {
            return Err(input);
        }
        self.shared().hooks_set.set(false);
        Ok(self.run_entered(py, input))
    }

    /// Switches onto the fiber, whose interpreter state was just entered, and runs it until it
    /// suspends or finishes.
    #[inline]
    fn run_entered(&mut self, py: Python<'_>, input: Resume) -> Step {
        let result = THREAD.with(|thread| {
            let previous = thread.current.replace(self.shared.as_ptr());
            self.shared().resumer.set(previous);
            self.status = Status::Running;
            let result = self.machine.resume(input);
            thread.current.set(previous);
            result
        });
        if !self.canary.intact() {
            stack_overflow_detected();
        }
        // What the fiber saw as it switched back (nothing ran since).
        if self.shared().hooks_set.get() {
            // SAFETY: GIL held (token), on the resumer's stack right after the switch back,
            // with the running fiber restored above.
            unsafe { report_switched_back(py) };
        }
        match result {
            CoroutineResult::Yield(awaitable) => {
                self.status = Status::Suspended;
                Step::Suspended(awaitable)
            }
            CoroutineResult::Return(result) => {
                self.status = Status::Finished;
                Step::Finished(outcome_into_result(py, result))
            }
        }
    }

    /// What the awaitable the fiber just suspended with has already yielded, if its first
    /// step ran on the fiber.
    pub fn take_first_yield(&self) -> Option<Py<PyAny>> {
        self.shared().first_yield.take()
    }

    /// Makes a fiber that has not started start with no context (one is created when first
    /// needed) instead of its resumer's.
    pub fn start_without_context(&self) {
        self.shared().start_without_context.set(true);
    }

    /// The context a greenlet's fiber ran in when its function returned.
    pub fn take_final_context(&self) -> Option<Py<PyAny>> {
        self.shared().final_context.take()
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

    /// Visits, for the cycle collector, the references this fiber holds: the context a fiber
    /// that has not started will run in; for a suspended one, what its interpreter state owns
    /// (context, handled exception, the references of its frames), the call its body makes,
    /// what its awaitable first yielded and the greenlet adopted for it.
    ///
    /// A running fiber's frames are on the thread's own chain, which the collector treats as
    /// a root: nothing is visited then. Nor when the fiber could not be finished if its owner
    /// turned out to be garbage (it belongs to another thread, or the interpreter is shutting
    /// down): the owner's finalizer could not throw into it, and the collector would go on to
    /// clear objects its frames still use; left unvisited, such a cycle waits for a collection
    /// on the fiber's own thread.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let shared = self.shared();
        match self.status {
            Status::NotStarted => {
                shared.traverse_call(visit)?;
                // SAFETY: GIL held (the collector runs with it), the fiber is not running.
                unsafe { shared.pystate.traverse(visit) }
            }
            Status::Suspended => {
                // SAFETY: the collector runs with the GIL held; the token is only used to read
                // the interpreter's finalization flag.
                let py = unsafe { Python::assume_attached() };
                if !self.can_be_finished_here(py) {
                    return Ok(());
                }
                // SAFETY: GIL held, the fiber is suspended.
                unsafe { shared.pystate.traverse(visit) }?;
                shared.traverse_call(visit)?;
                // SAFETY: nothing writes the cell while the collector runs (no Python code runs
                // and the fiber is suspended), so reading it in place is not a data race.
                visit.call(unsafe { &*shared.first_yield.as_ptr() })?;
                // SAFETY: as for `first_yield` just above.
                visit.call(unsafe { &*shared.held.as_ptr() })?;
                if let Ok(greenlet) = shared.greenlet.try_borrow() {
                    if let GreenletRef::Adopted(greenlet) = &*greenlet {
                        visit.call(greenlet)?;
                    }
                }
                Ok(())
            }
            Status::Running | Status::Finished | Status::Orphaned => Ok(()),
        }
    }

    /// The frame object of the innermost Python frame of a suspended fiber.
    pub fn top_frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.status != Status::Suspended {
            return Ok(None);
        }
        // SAFETY: GIL held and the fiber is suspended: its frames stay as they are while the
        // GIL is held (on any thread, as for `sys._current_frames()`).
        let frame = unsafe { self.shared().pystate.top_frame(py) }?;
        Ok(if frame.is_none() { None } else { Some(frame) })
    }
}

impl Drop for Fiber {
    fn drop(&mut self) {
        match self.status {
            Status::NotStarted | Status::Finished => {
                // SAFETY: taken exactly once, here; the handle is being dropped.
                let mut machine = unsafe { ManuallyDrop::take(&mut self.machine) };
                // The machine has not started or has returned: nothing on its stack needs
                // unwinding. One that never started still holds its closure, which
                // `into_stack` refuses: drop it without running it (nothing to do for one
                // that returned).
                machine.force_unwind();
                let stack = machine.into_stack();
                // SAFETY: allocated by Box::leak in `new`; the closure that also pointed to it
                // was dropped just above.
                drop(unsafe { Box::from_raw(self.shared.as_ptr()) });
                // The interpreter state that used the slot's frames area is gone: the slot can
                // serve another fiber.
                valgrind::deregister(self.valgrind_stack);
                stack_pool::give_back(stack);
            }
            // A suspended fiber still has CPython frames on its stack that only a Python
            // exception can finish, under its own thread state: its owner does that.
            Status::Suspended => self.orphan(None),
            // Nothing left here (orphaned), or, impossibly, still running: leak it rather
            // than unwind it.
            Status::Running | Status::Orphaned => {}
        }
    }
}

impl Fiber {
    /// Gives up a fiber that may be suspended: if it is, its owner finishes it (after closing
    /// `awaiting`, the iterator it waits on) when its thread state next runs awaitlet code.
    pub fn abandon(mut self, awaiting: Option<Py<PyAny>>) {
        if self.status == Status::Suspended {
            self.orphan(awaiting);
        }
    }

    fn orphan(&mut self, awaiting: Option<Py<PyAny>>) {
        // SAFETY: GIL held (handles are dropped and abandoned only by code holding it).
        let py = unsafe { Python::assume_attached() };
        self.status = Status::Orphaned;
        let orphan = Orphan {
            shared: self.shared,
            // SAFETY: taken once: the status no longer says Suspended, so neither Drop nor
            // anything else touches the machine again.
            machine: ManuallyDrop::new(unsafe { ManuallyDrop::take(&mut self.machine) }),
            canary: self.canary,
            valgrind_stack: self.valgrind_stack,
            awaiting,
        };
        self.owner.get().adopt(py, orphan);
    }
}

impl Orphan {
    /// Finishes the fiber under its owner's thread state: closes what it waited on and
    /// throws GeneratorExit (GreenletExit for a greenlet) in, so its `finally` blocks run.
    fn finish(self, py: Python<'_>, owner: &Py<FiberOwner>) {
        let Orphan {
            shared,
            machine,
            canary,
            valgrind_stack,
            awaiting,
        } = self;
        let mut fiber = Fiber {
            shared,
            machine,
            status: Status::Suspended,
            owner: owner.clone_ref(py),
            canary,
            valgrind_stack,
        };
        fiber.set_closing();
        let kind = fiber.shared().kind;
        let closed = awaiting.map_or(Ok(()), |awaiting| {
            crate::coroutine::close_iter(py, &awaiting)
        });
        let exit = match (closed, kind) {
            (Err(err), _) => err,
            (Ok(()), Kind::AsyncDef) => PyGeneratorExit::new_err(()),
            (Ok(()), Kind::Greenlet) => GreenletExit::new_err(()),
        };
        match fiber.resume(py, Resume::Throw(exit)) {
            Step::Finished(Err(err))
                if !err.is_instance_of::<PyGeneratorExit>(py)
                    && !err.is_instance_of::<GreenletExit>(py) =>
            {
                err.write_unraisable(py, None);
            }
            Step::Finished(_) => {}
            // A closing fiber cannot suspend (awaitlet() and switch() raise instead); if it
            // ever did, leak it rather than hand it over again.
            Step::Suspended(_) => std::mem::forget(fiber),
        }
    }

    /// Frees what can be freed of a fiber whose thread state is gone, so that nothing can run
    /// on it again: the references its saved thread state holds, its shared record, and its
    /// machine stack. Its frames are never finished, but (3.11+, unless a generator's frame is
    /// among them) what they reference is released as far as it is known, as when a frame is
    /// cleared. Its stack slot serves other fibers again, unless a Python frame object (or a
    /// generator) may still point into its frames area: then the slot is never reused, and
    /// only the pages of its machine stack are given back.
    fn retire(self, _py: Python<'_>) {
        let Orphan {
            shared,
            machine,
            valgrind_stack,
            awaiting: _awaiting,
            ..
        } = self;
        // SAFETY: `shared` is the live record of this suspended fiber, which nothing runs or
        // resumes any more (its thread state is gone, and the handle gave it up); GIL held.
        let reusable = unsafe { shared.as_ref().pystate.release_abandoned() };
        let mut machine = ManuallyDrop::into_inner(machine);
        // SAFETY: nothing will ever run on this stack again. What its frames still hold
        // (Python references not released above, the closure's call) is leaked, not dropped:
        // leaking is safe, and the memory those frames point to (heap objects) stays valid.
        unsafe { machine.force_reset() };
        valgrind::deregister(valgrind_stack);
        if reusable {
            stack_pool::give_back(machine.into_stack());
        } else {
            stack_pool::retire(machine.into_stack());
        }
        // SAFETY: allocated as a Box in `Fiber::new`; the only other user, the closure on the
        // retired stack, never runs again.
        drop(unsafe { Box::from_raw(shared.as_ptr()) });
    }
}

/// What a fiber's call returned (a new reference) or raised: two words, where a `PyResult`
/// takes several, in the frames that stay on a suspended fiber's stack.
type Outcome = Result<NonNull<ffi::PyObject>, Py<pyo3::exceptions::PyBaseException>>;

/// The body of every fiber. It and the functions it calls on the way to the Python call keep
/// small stack frames, with what they do before and after the call out of line: their frames
/// stay on the fiber's stack, in the pages a suspended fiber keeps resident.
///
/// A fiber may be resumed by a switch's fast path, which enters from CPython without PyO3's
/// trampoline (see `greenlet::switch_entry`): PyO3 may then not count the thread as attached
/// when the fiber's function returns, so what is released then is released inside
/// [`attached`], at once (in the fiber, as it is otherwise) rather than through PyO3's pool.
#[inline(never)]
fn fiber_main(shared: &Shared, yielder: &Yielder<Resume, Py<PyAny>>, start: Resume) -> Outcome {
    drop(start);
    shared.yielder.set(yielder);
    // SAFETY: fibers are resumed only by code holding the GIL, and it stays held across the
    // switch onto this stack.
    let py = unsafe { Python::assume_attached() };
    if shared.start_without_context.get() {
        start_without_context(py);
    }
    let returned = run_guarded(shared);
    let outcome = end_call_attached(shared, py, returned);
    finish_fiber(shared, py);
    outcome
}

/// [`Shared::end_call`] inside [`attached`] (see [`fiber_main`]), out of `fiber_main`'s frame,
/// which stays on the fiber's stack while it is suspended.
#[inline(never)]
fn end_call_attached(shared: &Shared, py: Python<'_>, returned: CallReturn) -> Outcome {
    attached(py, |py| shared.end_call(py, returned)).unwrap_or_else(|| {
        // `end_call` panicked: the trampoline raised the panic as an exception.
        Err(fetch_exception(py))
    })
}

#[inline(never)]
fn start_without_context(py: Python<'_>) {
    // SAFETY: GIL held, on the fiber's stack; None is allowed.
    unsafe { crate::pystate::set_current_context(&py.None().into_bound(py)) };
}

/// What the fiber's call came to: what [`Shared::run_call`] returned, or the payload of a
/// panic in it.
type CallReturn = Result<Option<*mut ffi::PyObject>, Box<dyn std::any::Any + Send>>;

/// Makes the fiber's call, catching a panic: a panic must not unwind out of the fiber's
/// stack, as corosensei would carry it through the resumer's CPython frames.
#[inline(never)]
fn run_guarded(shared: &Shared) -> CallReturn {
    catch_unwind(AssertUnwindSafe(|| shared.run_call()))
}

#[cold]
#[inline(never)]
fn panic_outcome(py: Python<'_>, payload: Box<dyn std::any::Any + Send>) -> Outcome {
    Err(panic_to_pyerr(payload).into_value(py))
}

/// The exception set by a call that returned NULL, taken out of the thread state. PyO3 turns
/// a PanicException it fetches back into the panic it stands for: that panic comes back as a
/// new PanicException, as a panic in the call would.
#[cold]
#[inline(never)]
fn fetch_exception(py: Python<'_>) -> Py<pyo3::exceptions::PyBaseException> {
    match catch_unwind(AssertUnwindSafe(|| PyErr::fetch(py).into_value(py))) {
        Ok(exception) => exception,
        Err(payload) => panic_to_pyerr(payload).into_value(py),
    }
}

/// The `PyResult` an [`Outcome`] stands for.
fn outcome_into_result(py: Python<'_>, outcome: Outcome) -> PyResult<Py<PyAny>> {
    match outcome {
        // SAFETY: a new reference returned by the call, GIL held.
        Ok(result) => Ok(unsafe { Bound::from_owned_ptr(py, result.as_ptr()) }.unbind()),
        Err(exception) => Err(PyErr::from_value(exception.into_bound(py).into_any())),
    }
}

/// What a fiber does after its call returned, before its stack is left for good.
#[inline(never)]
fn finish_fiber(shared: &Shared, py: Python<'_>) {
    // Finalizers run while the fiber's state is released must not suspend it.
    shared.closing.set(true);
    if shared.kind == Kind::Greenlet {
        let context = crate::pystate::current_context(py).unbind();
        shared.final_context.set(Some(context));
    }
    // SAFETY: on the fiber's stack, GIL held, the function has returned, and the fiber
    // returns right after.
    let hooks = unsafe { shared.pystate.finish() };
    shared.hooks_set.set(hooks);
}

#[cold]
#[inline(never)]
fn no_call() -> PyErr {
    PyRuntimeError::new_err("the fiber has no call to make")
}

/// A MemoryError, made without allocating.
fn no_memory(py: Python<'_>) -> PyErr {
    // SAFETY: GIL held; sets the preallocated MemoryError.
    unsafe { ffi::PyErr_NoMemory() };
    PyErr::fetch(py)
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

    /// Keeps `object` for this (running) fiber's code across its next suspension, where the
    /// collector sees it with the fiber's frames: a reference in a Rust local there would be
    /// one it cannot see, which keeps alive any garbage cycle through the object. Taken back
    /// with [`ActiveFiber::take_held`] once resumed; one object at a time.
    pub fn hold(&self, object: Py<PyAny>) {
        let previous = self.shared().held.replace(Some(object));
        drop(previous);
    }

    /// What [`ActiveFiber::hold`] kept, if anything.
    pub fn take_held(&self) -> Option<Py<PyAny>> {
        self.shared().held.take()
    }

    /// Whether the fiber is being closed (or has finished its function).
    pub fn is_closing(&self) -> bool {
        self.shared().closing.get()
    }

    /// Runs `step` as if this (running) fiber's resumer ran it: on the resumer's machine
    /// stack, below the frames it waits in (however deep `step` goes, it leaves no pages
    /// touched on the fiber's stack, which stay resident while the fiber is suspended), with
    /// that stack's limits for CPython's checks, the resumer's context and handled-exception
    /// state, and no fiber current, so that `awaitlet()` inside refuses as it would there.
    /// The fiber's Python frames stay the current ones. Only for fibers resumed by the
    /// thread's own stack.
    pub fn run_as_resumer<R>(&self, step: impl FnOnce() -> R) -> R {
        /// `on_parent_stack` wants a `Send` closure, only so that it cannot take the yielder
        /// to the parent's stack and suspend from there.
        struct SameThread<F>(F);
        // SAFETY: the closure runs on this thread, synchronously, and has no path to the
        // yielder: no fiber is current while `step` runs, so nothing it calls can suspend
        // this one (`awaitlet()` and greenlet switches refuse).
        unsafe impl<F> Send for SameThread<F> {}
        impl<F> SameThread<F> {
            fn run<R>(self) -> R
            where
                F: FnOnce() -> R,
            {
                (self.0)()
            }
        }
        struct Restore<'a> {
            shared: &'a Shared,
            thread: &'a ThreadFibers,
            previous: *const Shared,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                // SAFETY: pairs the swaps below, on the resumer's stack, with no switch
                // between.
                unsafe {
                    self.shared.pystate.swap_resumer_context();
                    self.shared.pystate.swap_resumer_stack_limits();
                }
                self.thread.current.set(self.previous);
            }
        }
        let shared = self.shared();
        assert!(
            shared.resumer.get().is_null(),
            "run_as_resumer with a fiber resumer"
        );
        let yielder = shared.yielder.get();
        assert!(!yielder.is_null(), "run_as_resumer on a fiber not running");
        let step = SameThread(move || {
            THREAD.with(|thread| {
                let previous = thread.current.replace(ptr::null());
                // SAFETY: GIL held, while the fiber runs, just moved onto its resumer's stack
                // below where it waits (see on_parent_stack below); Restore swaps back before
                // leaving it.
                unsafe {
                    shared.pystate.swap_resumer_stack_limits();
                    shared.pystate.swap_resumer_context();
                }
                let _restore = Restore {
                    shared,
                    thread,
                    previous,
                };
                step()
            })
        });
        // SAFETY: the yielder lives on this fiber's stack for as long as its closure runs,
        // which it does: we are in it. The resumer is the thread's own stack, waiting in its
        // switch onto this fiber: its stack below that point is free until this returns.
        unsafe { &*yielder }.on_parent_stack(move || step.run())
    }

    /// Suspends the fiber after the first step of `awaitable` ran without a switch and yielded
    /// `yielded`: the resumer hands `yielded` on and delegates to `awaitable` from there.
    /// `args_end`: see [`ActiveFiber::suspend_in_call`].
    pub fn suspend_after_first_step(
        &self,
        py: Python<'_>,
        awaitable: Py<PyAny>,
        yielded: Py<PyAny>,
        args_end: ArgsEnd,
    ) -> Resume {
        self.shared().first_yield.set(Some(yielded));
        self.suspend_in_call(py, awaitable, args_end)
    }

    /// Suspends the fiber, handing `awaitable` to its resumer, until it is resumed.
    pub fn suspend(&self, py: Python<'_>, awaitable: Py<PyAny>) -> Resume {
        self.suspend_in_call(py, awaitable, ArgsEnd::UNKNOWN)
    }

    /// [`ActiveFiber::suspend`] from a function whose arguments, passed by the calling Python
    /// code, end at `args_end`: the references in the caller's value stack are then known
    /// while the fiber is suspended (see [`Fiber::traverse`]). Trace and profile functions that
    /// keep a call stack are told that the fiber's frames leave and come back (see
    /// [`crate::pystate::report_suspend`]).
    #[inline(never)]
    pub fn suspend_in_call(
        &self,
        py: Python<'_>,
        awaitable: Py<PyAny>,
        args_end: ArgsEnd,
    ) -> Resume {
        let shared = self.shared();
        let yielder = shared.yielder.get();
        if yielder.is_null() {
            return Resume::Throw(PyRuntimeError::new_err("fiber has no resumer"));
        }
        if switch_hooks_set(py) {
            // SAFETY: on the fiber's stack, GIL held (token), before the switch begins; the
            // callable is null or a function object alive until the fiber is resumed.
            unsafe { report_suspend(py, args_end.callable) };
        }
        // SAFETY: on the fiber's stack, GIL held (token), the switch follows immediately.
        let hooks = unsafe { shared.pystate.leave(args_end.end) };
        shared.hooks_set.set(hooks);
        // SAFETY: the yielder lives on this fiber's stack for as long as its closure runs,
        // which it does: we are in it.
        let resumed = unsafe { &*yielder }.suspend(awaitable);
        report_resumed(py, args_end, resumed)
    }

    /// [`ActiveFiber::suspend_in_call`] for a switch's fast path, which has nothing to report:
    /// only if the fiber can suspend, the calling thread state's id is `thread` and no switch
    /// hooks are set; else it does nothing and hands `value` back. Drops no Python reference
    /// (a fast path may run where PyO3 does not count the thread as attached): it returns what
    /// the fiber is resumed with, before hooks are told of the resumption, and whether any
    /// are set (then the caller passes it through [`report_resumed`]).
    #[inline]
    pub fn suspend_unhooked(
        &self,
        thread: u64,
        value: Py<PyAny>,
        args_end: ArgsEnd,
    ) -> Result<(Resume, bool), Py<PyAny>> {
        let shared = self.shared();
        let yielder = shared.yielder.get();
        // SAFETY: on the fiber's stack (it is the running one), GIL held (a fast path is
        // called by CPython with it); if it leaves, the switch follows immediately.
        if yielder.is_null() || !unsafe { shared.pystate.leave_unhooked(args_end.end, thread) } {
            return Err(value);
        }
        shared.hooks_set.set(false);
        // SAFETY: the yielder lives on this fiber's stack for as long as its closure runs,
        // which it does: we are in it.
        let resumed = unsafe { &*yielder }.suspend(value);
        // What the resumer saw as it switched here (nothing ran since).
        Ok((resumed, shared.hooks_set.get()))
    }
}

/// Tells profile functions that the running fiber, suspended in the call `args_end`
/// describes, came back, if any hook is set (see [`crate::pystate::report_resume`]): what it
/// was resumed with, or a hook's error.
#[inline]
pub fn report_resumed(py: Python<'_>, args_end: ArgsEnd, resumed: Resume) -> Resume {
    if switch_hooks_set(py) {
        return report_resume_or_raise(py, args_end.callable, resumed);
    }
    resumed
}

/// Tells profile functions that a suspended fiber came back (see
/// [`crate::pystate::report_resume`]); an error from them is raised where the fiber resumes,
/// unless an exception is already thrown in (closing it, say), which must go on.
#[cold]
#[inline(never)]
fn report_resume_or_raise(py: Python<'_>, callable: *mut ffi::PyObject, resumed: Resume) -> Resume {
    // SAFETY: on the fiber's stack right after the switch back onto it, GIL held (token);
    // the callable is null or a function object alive until now (see `ArgsEnd`).
    match unsafe { report_resume(py, callable) } {
        Ok(()) => resumed,
        Err(err) => match resumed {
            Resume::Value(_) => Resume::Throw(err),
            Resume::Throw(thrown) => {
                err.write_unraisable(py, None);
                Resume::Throw(thrown)
            }
        },
    }
}

#[cold]
#[inline(never)]
pub fn panic_to_pyerr(payload: Box<dyn std::any::Any + Send>) -> PyErr {
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
