//! The greenlet facade's class and `getcurrent()` (exported by `awaitlet.greenlet`).
//!
//! A greenlet here switches (or throws) into any greenlet of its thread, with greenlet's
//! semantics (see [`switch_to`] for how that maps onto asymmetric fibers). There are three
//! kinds of greenlet objects:
//!
//! - a thread's main greenlet (the thread's own stack), one per thread, kept in the thread
//!   state's dict so that it goes away with the thread;
//! - greenlets created with `greenlet(run, parent)`, each owning a fiber;
//! - stand-ins for `async_def` fibers (what `getcurrent()` returns in their sync code),
//!   whose parent is whatever resumed that code and whose switch to the parent is
//!   `awaitlet()`; they declare `__sqlalchemy_greenlet_provider__`.
//!
//! Everything on the path of SQLAlchemy's `await_only()` and `greenlet_spawn()` loop
//! (`getcurrent()`, `parent`, `switch()`, `dead`) is native and takes no reference to the
//! running greenlet: a suspended stack must not keep its own greenlet alive, or dropping
//! that greenlet could never kill it.

use std::cell::RefMut;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::exceptions::{PyAttributeError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{ffi, intern, Borrowed, PyClassInitializer, PyTraverseError, PyVisit};

use crate::coroutine::{exception_from_throw_args, switch_to_resumer};
use crate::exceptions::{GreenletError, GreenletExit};
use crate::fiber::owner::{current_owner, finish_pending, FiberOwner};
use crate::fiber::{
    current_thread, panic_to_pyerr, report_resumed, ActiveFiber, ArgsEnd, Fiber, Kind, Resume, Step,
};
use crate::gil_cell::GilCell;
use crate::method_def::{attached, MethodDef};
use crate::pystate::{
    current_context, interpreter_finalizing, set_current_context, switch_hooks_set,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A thread's own stack.
    Main,
    /// Created by `greenlet(run, parent)`: runs `run` on its own fiber.
    Spawned,
    /// Stands for the sync code of an `async_def` coroutine.
    AsyncDef,
}

enum FiberSlot {
    NotStarted,
    Started(Fiber),
    /// Finished, or killed before it started.
    Dead,
}

/// Where a spawned greenlet is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    /// Running, or below the running greenlet on its thread's chain of resumed fibers
    /// (suspended, in greenlet's terms, inside a switch that resumed another fiber).
    Active,
    Suspended,
    Dead,
}

/// What a switch hands to the greenlet it goes to.
enum Payload {
    /// One value: `switch(value)`, or the result of a greenlet that finished.
    Value(Py<PyAny>),
    /// `switch(*args, **kwargs)` of any other shape.
    Args(Py<PyTuple>, Option<Py<PyDict>>),
    /// `throw()`, or the exception a greenlet finished with.
    Throw(PyErr),
    /// Not a switch: `awaitlet.portal.await_()` in a greenlet (see [`await_below`]) asks the
    /// `async_def` code below it to await `awaitable`, and to hand the outcome to `reply_to`.
    /// It travels down the chain as a switch to the main greenlet would.
    Await {
        awaitable: Py<PyAny>,
        reply_to: Py<Greenlet>,
    },
}

impl Payload {
    fn from_call(args: Bound<'_, PyTuple>, kwargs: Option<Bound<'_, PyDict>>) -> PyResult<Self> {
        let kwargs = kwargs.filter(|kwargs| !kwargs.is_empty());
        Ok(match kwargs {
            None if args.len() == 1 => Self::Value(args.get_item(0)?.unbind()),
            kwargs => Self::Args(args.unbind(), kwargs.map(Bound::unbind)),
        })
    }

    /// What a finished greenlet hands its parent: its result, or its exception, except that
    /// GreenletExit (which kills a greenlet quietly) is handed over as a value.
    fn from_finish(py: Python<'_>, result: PyResult<Py<PyAny>>) -> Self {
        match result {
            Ok(value) => Self::Value(value),
            Err(err) if err.is_instance_of::<GreenletExit>(py) => {
                Self::Value(err.into_value(py).into_any())
            }
            Err(err) => Self::Throw(err),
        }
    }

    /// What the pending `switch()` of the greenlet receiving this returns (or raises), with
    /// greenlet's convention: one argument as itself, else `args`, or `(args, kwargs)`.
    fn into_result(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Self::Value(value) => Ok(value),
            Self::Args(args, None) => Ok(args.into_any()),
            Self::Args(args, Some(kwargs)) if args.bind(py).is_empty() => Ok(kwargs.into_any()),
            Self::Args(args, Some(kwargs)) => {
                Ok(PyTuple::new(py, [args.into_any(), kwargs.into_any()])?
                    .into_any()
                    .unbind())
            }
            Self::Throw(err) => Err(err),
            // Sent only from above `async_def` code, whose fiber takes it (see `switch_to`).
            Self::Await { .. } => Err(PyRuntimeError::new_err(
                "awaitlet.portal.await_() found no async_def code below its greenlet",
            )),
        }
    }

    fn into_resume(self, py: Python<'_>) -> Resume {
        match self.into_result(py) {
            Ok(value) => Resume::Value(value),
            Err(err) => Resume::Throw(err),
        }
    }
}

/// How many main greenlets exist (greenlet's `get_total_main_greenlets()`).
static MAIN_GREENLETS: AtomicUsize = AtomicUsize::new(0);
/// How many thread states have a `settrace()` function: none, almost always, and then a
/// switch does not look for one.
static TRACERS: AtomicUsize = AtomicUsize::new(0);

/// A function running on its own stack (greenlet's `greenlet` class: `run`, `parent`,
/// `switch`, `throw`, `dead`, `gr_context`, `gr_frame`).
///
/// `greenlet(run=None, parent=None)`: the first `switch()` into it calls `run` (or the
/// subclass's `run` method) with the switch's arguments; `parent`, by default the running
/// greenlet, is where it switches back to, with `run`'s result when it returns.
#[pyclass(
    module = "awaitlet.greenlet",
    name = "greenlet",
    subclass,
    dict,
    weakref,
    frozen
)]
pub struct Greenlet {
    role: Role,
    /// The token of the thread the greenlet belongs to.
    thread: u64,
    /// Spawned: its parent; async_def: what resumed it, when last asked; main: None.
    parent: GilCell<Option<Py<Greenlet>>>,
    /// Spawned only; borrowed for as long as the fiber runs (or resumed another one and
    /// waits for it), so that a re-entrant switch into it is refused.
    fiber: GilCell<FiberSlot>,
    /// Before a spawned greenlet starts: the context to start in (None: none, one is created
    /// when first needed).
    initial_context: GilCell<Option<Py<PyAny>>>,
    /// After a spawned greenlet finished: the context it finished in.
    final_context: GilCell<Option<Py<PyAny>>>,
    /// While this greenlet's fiber suspends: where the switch goes, and with what.
    outgoing: GilCell<Option<(Py<Greenlet>, Payload)>>,
    /// Main only: the fibers' owner of its thread state, which says when that is gone.
    owner: Option<Py<FiberOwner>>,
    /// The `run` given to the constructor or set before the start (a subclass's `run`
    /// method is found on the class instead); dropped at the start.
    run: GilCell<Option<Py<PyAny>>>,
    /// True once the object holds this value: the collector can visit an instance between
    /// its allocation (zeroed memory, already tracked) and the moment PyO3 moves the value in
    /// (creating the instance dict can run a collection), when no other field is valid yet.
    initialized: bool,
}

/// The greenlet `getcurrent()` returns in sync code run by `async_def`.
#[pyclass(
    module = "awaitlet.greenlet",
    name = "_AsyncDefGreenlet",
    extends = Greenlet,
    frozen
)]
pub struct AsyncDefGreenlet;

#[pymethods]
impl AsyncDefGreenlet {
    /// SQLAlchemy's `await_only()` (and `awaitlet()`) switch to the parent of a greenlet that
    /// declares this: the parent awaits what it is handed.
    #[classattr]
    #[pyo3(name = "__sqlalchemy_greenlet_provider__")]
    fn provider() -> bool {
        true
    }
}

impl Greenlet {
    fn with_role(role: Role, parent: Option<Py<Greenlet>>) -> Self {
        Self {
            role,
            thread: current_thread(),
            parent: GilCell::new(parent),
            fiber: GilCell::new(FiberSlot::NotStarted),
            initial_context: GilCell::new(None),
            final_context: GilCell::new(None),
            outgoing: GilCell::new(None),
            owner: None,
            run: GilCell::new(None),
            initialized: true,
        }
    }

    fn is_main_of_this_thread(&self) -> bool {
        self.role == Role::Main && self.thread == current_thread()
    }

    /// A main greenlet whose thread state is gone.
    fn thread_exited(&self) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|owner| !owner.get().is_alive())
    }

    fn phase(&self) -> Phase {
        match self.fiber.try_borrow().as_deref() {
            None => Phase::Active,
            Some(FiberSlot::NotStarted) => Phase::Pending,
            Some(FiberSlot::Dead) => Phase::Dead,
            Some(FiberSlot::Started(fiber)) if fiber.is_suspended() => Phase::Suspended,
            Some(FiberSlot::Started(_)) => Phase::Active,
        }
    }

    fn is_dead(&self) -> bool {
        match self.role {
            Role::Spawned => self.phase() == Phase::Dead,
            Role::Main => self.thread_exited(),
            Role::AsyncDef => false,
        }
    }

    fn slot(&self) -> PyResult<RefMut<'_, FiberSlot>> {
        self.fiber
            .try_borrow_mut()
            .ok_or_else(|| GreenletError::new_err("greenlet is already running"))
    }

    fn parent_bound<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Greenlet>> {
        self.parent
            .try_borrow()
            .and_then(|parent| parent.as_ref().map(|parent| parent.bind(py).clone()))
    }

    /// Hands `payload` to this suspended or not yet started greenlet and runs it until it
    /// switches away or finishes.
    fn transfer(slf: &Bound<'_, Self>, payload: Payload) -> PyResult<Transfer> {
        let py = slf.py();
        let this = slf.get();
        // A greenlet that is to start has its `run` looked up first, as greenlet does, even
        // by a throw(), and with the slot free: the lookup may run Python code that switches,
        // even into this greenlet, which then starts there. If it did, the switch is made
        // again from the start, to a greenlet that is now suspended or dead.
        let starting = matches!(
            this.fiber.try_borrow().as_deref(),
            Some(FiberSlot::NotStarted)
        );
        let run = if starting { Some(take_run(slf)?) } else { None };
        let mut slot = this.slot()?;
        let input = match (&*slot, run) {
            (FiberSlot::NotStarted, Some((run, leftover))) => {
                check_parent_thread(py, this)?;
                let (args, kwargs) = match payload {
                    // Killed before it started: it dies without running.
                    Payload::Throw(err) => {
                        *slot = FiberSlot::Dead;
                        return Ok(Transfer::Ran(Step::Finished(Err(err))));
                    }
                    Payload::Value(value) => (PyTuple::new(py, [value])?.unbind(), None),
                    Payload::Args(args, kwargs) => (args, kwargs),
                    Payload::Await { .. } => return Err(payload.into_result(py).unwrap_err()),
                };
                let run = start_callable(py, run, leftover)?;
                let fiber = Fiber::calling(py, Kind::Greenlet, run.unbind(), args, kwargs)?;
                fiber.set_owner_greenlet(slf.as_ptr());
                let context = this
                    .initial_context
                    .try_borrow_mut()
                    .and_then(|mut c| c.take());
                match context {
                    // SAFETY: the gr_context setter stores only Contexts.
                    Some(context) => unsafe { fiber.set_context(context.bind(py)) }?,
                    // As in greenlet, a new greenlet starts with no context.
                    None => fiber.start_without_context(),
                }
                *slot = FiberSlot::Started(fiber);
                Resume::Value(py.None())
            }
            (_, Some(_)) => return Ok(Transfer::Again(payload)),
            (FiberSlot::Started(fiber), None) if fiber.thread() != current_thread() => {
                return Err(if fiber.owner().get().is_alive() {
                    different_thread()
                } else {
                    GreenletError::new_err(
                        "cannot switch to a different thread (which happens to have exited)",
                    )
                });
            }
            (FiberSlot::Started(fiber), None) if fiber.is_suspended() => payload.into_resume(py),
            _ => return Err(GreenletError::new_err("greenlet is not suspended")),
        };
        Ok(Transfer::Ran(step(py, this, &mut slot, input)))
    }

    /// Checks that the running greenlet may switch (or throw) into this one.
    fn check_thread(&self) -> PyResult<()> {
        if self.thread == current_thread() {
            return Ok(());
        }
        let exited = match self.fiber.try_borrow().as_deref() {
            Some(FiberSlot::Started(fiber)) => !fiber.owner().get().is_alive(),
            _ => self.thread_exited(),
        };
        if exited {
            return Err(GreenletError::new_err(
                "cannot switch to a different thread (which happens to have exited)",
            ));
        }
        Err(different_thread())
    }
}

/// What came of handing a switch to a greenlet (see [`Greenlet::transfer`]).
enum Transfer {
    /// It ran until it switched away or finished.
    Ran(Step),
    /// Looking up its `run` started it (or ran it to the end): switch to it again.
    Again(Payload),
}

/// Resumes the started fiber in `slot`; marks it dead when it finishes.
fn step(py: Python<'_>, this: &Greenlet, slot: &mut FiberSlot, input: Resume) -> Step {
    let FiberSlot::Started(fiber) = slot else {
        return Step::Finished(Err(GreenletError::new_err("greenlet is not suspended")));
    };
    let outcome = fiber.resume(py, input);
    if let Step::Finished(_) = &outcome {
        bury(this, slot);
    }
    outcome
}

/// Marks the greenlet whose fiber (in `slot`) finished dead, keeping the context the fiber
/// finished in for `gr_context`.
fn bury(this: &Greenlet, slot: &mut FiberSlot) {
    if let FiberSlot::Started(fiber) = slot {
        let context = fiber.take_final_context();
        *slot = FiberSlot::Dead;
        if let Some(mut saved) = this.final_context.try_borrow_mut() {
            *saved = context;
        }
    }
}

/// A greenlet starts only if its parent (which `run` may just have changed) is of its thread.
fn check_parent_thread(py: Python<'_>, this: &Greenlet) -> PyResult<()> {
    let Some(parent) = this.parent_bound(py) else {
        return Ok(());
    };
    if parent.get().thread == current_thread() {
        return Ok(());
    }
    let mut root = parent.clone();
    while let Some(up) = root.get().parent_bound(py) {
        root = up;
    }
    if root.get().thread_exited() {
        return Err(GreenletError::new_err(
            "cannot switch to a different thread (which happens to have exited)",
        ));
    }
    Err(GreenletError::new_err(format!(
        "Cannot switch to a different thread\n\tCurrent:  {}\n\tExpected: {}",
        current_greenlet(py)?.repr()?,
        parent.repr()?
    )))
}

fn different_thread() -> PyErr {
    GreenletError::new_err("cannot switch to a different thread")
}

/// Whether `greenlet` (at `address`) stands for `active`: a fiber of this thread's active
/// chain, or None for the thread's own stack.
fn stands_for_active(
    greenlet: &Greenlet,
    address: *mut ffi::PyObject,
    active: Option<ActiveFiber>,
) -> bool {
    match active {
        None => greenlet.is_main_of_this_thread(),
        Some(fiber) => fiber.greenlet_ptr() == address,
    }
}

/// Whether the greenlet object `slf` stands for `active` (see [`stands_for_active`]).
fn stands_for(slf: &Bound<'_, Greenlet>, active: Option<ActiveFiber>) -> bool {
    stands_for_active(slf.get(), slf.as_ptr(), active)
}

/// Whether `slf` stands for a fiber on the chain from the running one down to the thread's
/// own stack.
fn on_active_chain(slf: &Bound<'_, Greenlet>, running: Option<ActiveFiber>) -> bool {
    let mut fiber = running;
    while let Some(active) = fiber {
        if active.greenlet_ptr() == slf.as_ptr() {
            return true;
        }
        fiber = active.resumer();
    }
    false
}

/// Switches from the running greenlet to `target` with `payload`, with greenlet's semantics,
/// and returns what the running greenlet is handed when something switches back to it.
///
/// corosensei's coroutines are asymmetric: a fiber returns control only to the one that
/// resumed it. So:
/// - a target that is suspended (or not started) is resumed from here, on top of the running
///   fiber, which waits inside this call;
/// - a target below the running greenlet on the chain of resumed fibers is reached by
///   suspending the running fiber with the switch as its request; each fiber in between
///   receives it and passes it on by suspending too, staying suspended inside its own
///   pending switch, which is where greenlet leaves a greenlet that switched away;
/// - a fiber that finishes hands its result (or exception) to its parent (or the nearest
///   live ancestor) from whichever fiber resumed it.
///
/// A switch that would go below `async_def` code goes to its driver instead, as `awaitlet()`
/// does: the driver awaits what it is handed.
fn switch_to<'py>(
    py: Python<'py>,
    mut target: Bound<'py, Greenlet>,
    mut payload: Payload,
    call: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    let running = ActiveFiber::running();
    loop {
        // A dead greenlet passes what it is sent to its parent.
        while target.get().role == Role::Spawned && target.get().phase() == Phase::Dead {
            match target.get().parent_bound(py) {
                Some(parent) => target = parent,
                None => break,
            }
        }
        if stands_for(&target, running) {
            return arrived(py, payload.into_result(py));
        }
        let this = target.get();
        this.check_thread()?;
        let outcome = match (this.role, this.phase()) {
            (Role::Spawned, Phase::Pending | Phase::Suspended) => {
                match Greenlet::transfer(&target, payload)? {
                    Transfer::Ran(outcome) => outcome,
                    Transfer::Again(same) => {
                        payload = same;
                        continue;
                    }
                }
            }
            (Role::AsyncDef, _) if !on_active_chain(&target, running) => {
                return Err(GreenletError::new_err(
                    "awaitlet's greenlet cannot switch into async_def() code that is not \
                     running; use its coroutine",
                ));
            }
            (Role::Main, _) if this.thread_exited() => {
                return Err(GreenletError::new_err(
                    "cannot switch to a main greenlet whose thread has exited",
                ));
            }
            _ => match (payload, running) {
                (
                    Payload::Await {
                        awaitable,
                        reply_to,
                    },
                    Some(fiber),
                ) if fiber.kind() == Kind::AsyncDef => {
                    (target, payload) = await_for(py, fiber, awaitable, reply_to, call)?;
                    continue;
                }
                (payload, _) => return switch_down(py, running, target, payload, call),
            },
        };
        match onward(py, target, outcome) {
            Onward::To(next, next_payload) => {
                target = next;
                payload = next_payload;
            }
            Onward::Back(result) => return result,
        }
    }
}

/// Where a switch goes once the greenlet it handed over to has switched away or finished
/// (see [`switch_to`]).
enum Onward<'py> {
    /// On: to the greenlet it switched to, or, when it finished, to its parent with its
    /// result.
    To(Bound<'py, Greenlet>, Payload),
    /// Back to the running greenlet's pending switch: what the greenlet handed over (it
    /// suspended with no switch requested: `awaitlet()` in a greenlet that awaits for its
    /// code, or a switch to the fiber that resumed it), or the result of one with no parent.
    Back(PyResult<Py<PyAny>>),
}

/// Where the switch goes after `target`, which the running greenlet resumed, came to
/// `outcome` (a finished greenlet already marked dead).
fn onward<'py>(py: Python<'py>, target: Bound<'py, Greenlet>, outcome: Step) -> Onward<'py> {
    let this = target.get();
    match outcome {
        Step::Suspended(value) => {
            let request = this
                .outgoing
                .try_borrow_mut()
                .and_then(|mut out| out.take());
            match request {
                Some((next, payload)) => Onward::To(next.into_bound(py), payload),
                None => Onward::Back(Ok(value)),
            }
        }
        Step::Finished(result) => {
            let Some(parent) = this.parent_bound(py) else {
                return Onward::Back(result);
            };
            let payload = Payload::from_finish(py, result);
            set_switch_origin(&target);
            Onward::To(parent, payload)
        }
    }
}

/// The bound `switch`/`throw` method a profiler saw called, when a trace or profile function
/// is set: it is told that the call ends and starts again around the switch (see
/// `ArgsEnd::with_callable`). Kept by the caller until the switch returns.
fn profiled_method<'py>(
    slf: &Bound<'py, Greenlet>,
    name: &Bound<'py, pyo3::types::PyString>,
) -> Option<Bound<'py, PyAny>> {
    switch_hooks_set(slf.py())
        .then(|| slf.getattr(name).ok())
        .flatten()
        // SAFETY: GIL held (slf is bound), valid object.
        .filter(|method| unsafe { ffi::PyCFunction_Check(method.as_ptr()) } != 0)
}

/// What a switch from a method call passes to the fiber's suspension: where its arguments
/// end, if known, and the method a profiler saw called (see `profiled_method`).
fn call_of(method: Option<&Bound<'_, PyAny>>, args_end: ArgsEnd) -> ArgsEnd {
    method.map_or(args_end, |method| args_end.with_callable(method.as_ptr()))
}

/// Takes the running greenlet out of the way of a switch to `target`, a greenlet below it on
/// the chain of resumed fibers (see [`switch_to`]); returns what it is handed when resumed.
fn switch_down(
    py: Python<'_>,
    running: Option<ActiveFiber>,
    target: Bound<'_, Greenlet>,
    payload: Payload,
    call: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    let Some(fiber) = running else {
        return Err(GreenletError::new_err(format!(
            "cannot switch to {}: it is not suspended",
            target.repr()?
        )));
    };
    match fiber.kind() {
        Kind::Greenlet => {
            if fiber.is_closing() {
                return Err(PyRuntimeError::new_err(
                    "greenlet ignored GreenletExit and switched again while being killed",
                ));
            }
            {
                // Dropped before the fiber suspends: a suspended stack must not keep its own
                // greenlet alive, or dropping that greenlet could never kill it.
                let current = fiber_greenlet(py, fiber)?;
                let mut outgoing = current
                    .get()
                    .outgoing
                    .try_borrow_mut()
                    .ok_or_else(|| GreenletError::new_err("greenlet is busy"))?;
                *outgoing = Some((target.unbind(), payload));
            }
            arrived(
                py,
                match fiber.suspend_in_call(py, py.None(), call) {
                    Resume::Value(value) => Ok(value),
                    Resume::Throw(err) => Err(err),
                },
            )
        }
        // async_def code: its driver receives what is switched (or thrown) below it.
        Kind::AsyncDef => {
            let value = payload.into_result(py)?;
            switch_to_resumer(py, fiber, value.bind(py), call)
        }
    }
}

/// Whether `async_def` code is on the chain of resumed fibers below the running `fiber`.
pub fn async_def_below(fiber: ActiveFiber) -> bool {
    let mut below = fiber.resumer();
    while let Some(active) = below {
        if active.kind() == Kind::AsyncDef {
            return true;
        }
        below = active.resumer();
    }
    false
}

/// `awaitlet.portal.await_()`'s suspension in a greenlet running on `fiber` above `async_def`
/// code (see [`async_def_below`]): the nearest such code's driver awaits `awaitable`, as it
/// would an `awaitlet()` there, and the outcome comes back here, as greenback's portal hands
/// it to the greenlet that asked. The greenlets in between stay suspended inside their
/// pending switches, where greenlet leaves greenlets that switched away; the one that asked
/// is resumed by the `async_def` code's fiber from then on.
pub fn await_below(
    py: Python<'_>,
    fiber: ActiveFiber,
    awaitable: Py<PyAny>,
    call: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    // Sent as a switch to the main greenlet is: `switch_down` passes it on, fiber by fiber,
    // to the first `async_def` code, which `switch_to` hands it to (see `await_for`).
    let reply_to = fiber_greenlet(py, fiber)?.unbind();
    let payload = Payload::Await {
        awaitable,
        reply_to,
    };
    switch_down(py, Some(fiber), main_greenlet(py)?, payload, call)
}

/// Where a request of [`await_below`] arrives: in `async_def` code running on `fiber`, whose
/// driver awaits `awaitable`; returns where the outcome goes: to the greenlet that asked.
fn await_for<'py>(
    py: Python<'py>,
    fiber: ActiveFiber,
    awaitable: Py<PyAny>,
    reply_to: Py<Greenlet>,
    call: ArgsEnd,
) -> PyResult<(Bound<'py, Greenlet>, Payload)> {
    // Kept where the collector sees it while the driver waits: a task abandoned while the
    // greenlet waits is garbage even if the greenlet's frames refer to it.
    fiber.hold(reply_to.into_any());
    let outcome = switch_to_resumer(py, fiber, awaitable.bind(py), call);
    drop(awaitable);
    let reply_to = fiber
        .take_held()
        .and_then(|held| held.into_bound(py).cast_into::<Greenlet>().ok())
        .ok_or_else(|| GreenletError::new_err("the greenlet awaiting here is gone"))?;
    let payload = match outcome {
        Ok(value) => Payload::Value(value),
        Err(err) => Payload::Throw(err),
    };
    Ok((reply_to, payload))
}

thread_local! {
    /// While a switch is under way and a `settrace()` function may be set: the greenlet it
    /// comes from, for the trace call the target makes when it arrives.
    static SWITCH_ORIGIN: std::cell::RefCell<Option<Py<Greenlet>>> =
        const { std::cell::RefCell::new(None) };
}

/// Notes `origin` as where the switch under way comes from, if any thread traces switches.
fn set_switch_origin(origin: &Bound<'_, Greenlet>) {
    if TRACERS.load(Ordering::Relaxed) != 0 {
        let origin = origin.clone().unbind();
        let previous = SWITCH_ORIGIN.with(|slot| slot.borrow_mut().replace(origin));
        drop(previous);
    }
}

/// Notes the running greenlet as where the switch it starts comes from (see
/// [`set_switch_origin`]).
fn set_switch_origin_current(py: Python<'_>) -> PyResult<()> {
    if TRACERS.load(Ordering::Relaxed) != 0 {
        set_switch_origin(&current_greenlet(py)?);
    }
    Ok(())
}

/// Called in the greenlet a switch arrived in, with what the switch hands it: as greenlet
/// does, the thread's `settrace()` function is called there, after the switch, with
/// `("switch" | "throw", (origin, target))`. What was handed over is taken first, so a
/// tracer that switches away and back does not change it; if the tracer raises, tracing
/// stops and its exception is what the switch raises.
fn arrived(py: Python<'_>, handed: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    if TRACERS.load(Ordering::Relaxed) == 0 {
        return handed;
    }
    let Some(origin) = SWITCH_ORIGIN.with(|slot| slot.borrow_mut().take()) else {
        return handed;
    };
    let tracer = match thread_tracer(py) {
        Ok(Some(tracer)) => tracer,
        Ok(None) => return handed,
        Err(err) => return Err(err),
    };
    let target = current_greenlet(py)?;
    let event = if handed.is_err() { "throw" } else { "switch" };
    match tracer.call1((event, (origin, target))) {
        Ok(_) => handed,
        Err(err) => {
            let _ = set_thread_tracer(py, None);
            Err(err)
        }
    }
}

/// What a starting greenlet calls: `run` itself, or, when something must happen in the new
/// greenlet first, `run` wrapped so that the greenlet first drops `leftover` (the `run` that
/// was stored but not used; its finalizer may switch) and then, if some thread traces
/// switches, reports its arrival (see [`arrived`]), in greenlet's order.
fn start_callable<'py>(
    py: Python<'py>,
    run: Bound<'py, PyAny>,
    leftover: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let traced = TRACERS.load(Ordering::Relaxed) != 0;
    if leftover.is_none() && !traced {
        return Ok(run);
    }
    let run = run.unbind();
    let leftover = std::sync::Mutex::new(leftover);
    let start = move |args: &Bound<'_, PyTuple>,
                      kwargs: Option<&Bound<'_, PyDict>>|
          -> PyResult<Py<PyAny>> {
        let py = args.py();
        let dropped = leftover
            .lock()
            .ok()
            .and_then(|mut leftover| leftover.take());
        drop(dropped);
        if traced {
            arrived(py, Ok(py.None()))?;
        }
        run.bind(py).call(args, kwargs).map(Bound::unbind)
    };
    Ok(pyo3::types::PyCFunction::new_closure(py, None, None, start)?.into_any())
}

const TRACER_KEY: &str = "awaitlet.greenlet.trace";

fn thread_dict(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: GIL held, so this thread has a thread state; the dict is a borrowed
    // reference, NULL only if it could not be created.
    let dict = unsafe { Bound::from_borrowed_ptr_or_err(py, ffi::PyThreadState_GetDict()) }?;
    Ok(dict.cast_into::<PyDict>()?)
}

fn thread_tracer(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    thread_dict(py)?.get_item(intern!(py, TRACER_KEY))
}

/// Sets (None: removes) the calling thread's trace function; returns the previous one.
fn set_thread_tracer<'py>(
    py: Python<'py>,
    tracer: Option<Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let dict = thread_dict(py)?;
    let key = intern!(py, TRACER_KEY);
    let previous = dict.get_item(key)?;
    match tracer {
        Some(tracer) => {
            dict.set_item(key, tracer)?;
            if previous.is_none() {
                TRACERS.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            if previous.is_some() {
                dict.del_item(key)?;
                TRACERS.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
    Ok(previous)
}

/// `greenlet.settrace(callback)`: calls `callback(event, (origin, target))` at every switch
/// of the calling thread (`event` is "switch" or "throw"); None removes it. Returns the
/// previous callback.
#[pyfunction]
#[pyo3(text_signature = "(callback)")]
pub fn settrace<'py>(
    py: Python<'py>,
    callback: Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let callback = (!callback.is_none()).then_some(callback);
    set_thread_tracer(py, callback)
}

/// `greenlet.gettrace()`: the calling thread's trace callback, or None.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn gettrace(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    thread_tracer(py)
}

/// How many main greenlets exist (one per thread that used greenlets and still exists, or
/// whose main greenlet is still referenced).
#[pyfunction]
#[pyo3(name = "_greenlet_total_main_greenlets")]
pub fn get_total_main_greenlets() -> usize {
    MAIN_GREENLETS.load(Ordering::Relaxed)
}

/// Sets `key` in the calling thread state's dict (greenlet's `set_thread_local()`).
#[pyfunction]
#[pyo3(name = "_greenlet_set_thread_local")]
pub fn set_thread_local(
    py: Python<'_>,
    key: Bound<'_, PyAny>,
    value: Bound<'_, PyAny>,
) -> PyResult<()> {
    thread_dict(py)?.set_item(key, value)
}

fn check_context(context: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: GIL held, valid object.
    if context.is_none() || unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } != 0 {
        Ok(())
    } else {
        Err(PyTypeError::new_err(
            "greenlet context must be a contextvars.Context or None",
        ))
    }
}

/// The running greenlet: the thread's main greenlet outside any fiber.
pub fn current_greenlet(py: Python<'_>) -> PyResult<Bound<'_, Greenlet>> {
    greenlet_standing_for(py, ActiveFiber::running())
}

/// The greenlet standing for `active` (None: the thread's own stack, its main greenlet).
fn greenlet_standing_for(
    py: Python<'_>,
    active: Option<ActiveFiber>,
) -> PyResult<Bound<'_, Greenlet>> {
    match active {
        None => main_greenlet(py),
        Some(fiber) => fiber_greenlet(py, fiber),
    }
}

/// The calling thread's main greenlet, created on first use.
fn main_greenlet(py: Python<'_>) -> PyResult<Bound<'_, Greenlet>> {
    let dict = thread_dict(py)?;
    let key = intern!(py, "awaitlet.greenlet.main");
    if let Some(main) = dict.get_item(key)? {
        return Ok(main.cast_into::<Greenlet>()?);
    }
    let mut greenlet = Greenlet::with_role(Role::Main, None);
    greenlet.owner = Some(current_owner(py)?);
    let main = Bound::new(py, greenlet)?;
    MAIN_GREENLETS.fetch_add(1, Ordering::Relaxed);
    dict.set_item(key, &main)?;
    Ok(main)
}

/// The greenlet standing for an active `fiber`; an `async_def` fiber gets one on first use.
fn fiber_greenlet(py: Python<'_>, fiber: ActiveFiber) -> PyResult<Bound<'_, Greenlet>> {
    if let Some(greenlet) = fiber.greenlet(py) {
        return Ok(greenlet.cast_into::<Greenlet>()?);
    }
    let initializer = PyClassInitializer::from(Greenlet::with_role(Role::AsyncDef, None))
        .add_subclass(AsyncDefGreenlet);
    let greenlet = Bound::new(py, initializer)?.into_super();
    fiber.adopt_greenlet(greenlet.clone().into_any().unbind())?;
    Ok(greenlet)
}

/// The greenlet that is running (the thread's main greenlet outside any fiber). Like
/// greenlet's, it first kills the greenlets of this thread that became garbage elsewhere.
#[pyfunction]
pub fn getcurrent(py: Python<'_>) -> PyResult<Bound<'_, Greenlet>> {
    // As in greenlet: a finalizer run by the interpreter's shutdown must not get (or make) a
    // greenlet of a thread state that is going away.
    if interpreter_finalizing(py) {
        return Err(PyRuntimeError::new_err("greenlet is being finalized"));
    }
    finish_pending(py);
    current_greenlet(py)
}

#[pymethods]
impl Greenlet {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs), text_signature = "(run=None, parent=None)")]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        // As in greenlet, creating one also kills this thread's garbage from elsewhere.
        finish_pending(py);
        let parent = current_greenlet(py)?.unbind();
        Ok(Self::with_role(Role::Spawned, Some(parent)))
    }

    /// `greenlet(run=None, parent=None)`: `run` is called by the first switch into it;
    /// `parent` (by default the running greenlet) is where its result goes.
    #[pyo3(signature = (*args, **kwargs))]
    fn __init__(
        slf: &Bound<'_, Self>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let py = slf.py();
        if args.len() > 2 {
            return Err(PyTypeError::new_err(
                "greenlet() takes at most 2 positional arguments",
            ));
        }
        let mut run = args.get_item(0).ok();
        let mut parent = args.get_item(1).ok();
        if let Some(kwargs) = kwargs {
            for (name, value) in kwargs.iter() {
                match name.extract::<&str>()? {
                    "run" if run.is_none() => run = Some(value),
                    "parent" if parent.is_none() => parent = Some(value),
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "greenlet() got an unexpected or repeated keyword argument '{other}'"
                        )))
                    }
                }
            }
        }
        // An explicit run=None is kept: the greenlet's `run` is None.
        if let Some(run) = run {
            slf.setattr(intern!(py, "run"), run)?;
        }
        if let Some(parent) = parent.filter(|parent| !parent.is_none()) {
            Self::set_parent(slf, parent)?;
        }
        Ok(())
    }

    #[classattr]
    #[pyo3(name = "GreenletExit")]
    fn greenlet_exit(py: Python<'_>) -> Py<PyAny> {
        py.get_type::<GreenletExit>().into_any().unbind()
    }

    #[classattr]
    #[pyo3(name = "error")]
    fn error(py: Python<'_>) -> Py<PyAny> {
        py.get_type::<GreenletError>().into_any().unbind()
    }

    #[staticmethod]
    #[pyo3(name = "settrace")]
    fn settrace_static<'py>(
        py: Python<'py>,
        callback: Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        settrace(py, callback)
    }

    #[staticmethod]
    #[pyo3(name = "gettrace")]
    fn gettrace_static(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
        gettrace(py)
    }

    /// The callable the greenlet runs; gone once it started.
    #[getter]
    fn run(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.run
            .try_borrow()
            .and_then(|run| run.as_ref().map(|run| run.clone_ref(py)))
            .ok_or_else(|| PyAttributeError::new_err("run"))
    }

    #[setter]
    fn set_run(&self, run: Bound<'_, PyAny>) -> PyResult<()> {
        if self.role != Role::Spawned || self.phase() != Phase::Pending {
            return Err(PyAttributeError::new_err(
                "run cannot be set after the start of the greenlet",
            ));
        }
        if let Some(mut stored) = self.run.try_borrow_mut() {
            *stored = Some(run.unbind());
        }
        Ok(())
    }

    /// The running greenlet (the thread's main greenlet outside any fiber).
    #[staticmethod]
    #[pyo3(name = "getcurrent")]
    fn getcurrent_static(py: Python<'_>) -> PyResult<Bound<'_, Greenlet>> {
        getcurrent(py)
    }

    /// The greenlet this one's result goes to (None for a main greenlet).
    #[getter]
    fn parent(slf: &Bound<'_, Self>) -> PyResult<Option<Py<Greenlet>>> {
        let py = slf.py();
        let this = slf.get();
        if this.role == Role::AsyncDef {
            // Whatever resumed the async_def code while it runs.
            let running = ActiveFiber::running().filter(|f| f.greenlet_ptr() == slf.as_ptr());
            if let Some(fiber) = running {
                let resumer = greenlet_standing_for(py, fiber.resumer())?;
                if let Some(mut parent) = this.parent.try_borrow_mut() {
                    *parent = Some(resumer.unbind());
                }
            }
        }
        Ok(this
            .parent
            .try_borrow()
            .and_then(|parent| parent.as_ref().map(|parent| parent.clone_ref(py))))
    }

    #[setter]
    fn set_parent(slf: &Bound<'_, Self>, parent: Bound<'_, PyAny>) -> PyResult<()> {
        let parent = parent.cast_into::<Greenlet>().map_err(|err| {
            PyTypeError::new_err(format!(
                "GreenletChecker: Expected any type of greenlet, not {}",
                err.into_inner()
                    .get_type()
                    .name()
                    .map(|name| name.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let this = slf.get();
        match this.role {
            Role::Main => {
                return Err(PyAttributeError::new_err(
                    "cannot set the parent of a main greenlet",
                ))
            }
            Role::AsyncDef => {
                return Err(GreenletError::new_err(
                    "awaitlet's greenlet cannot change the parent of async_def() code",
                ))
            }
            Role::Spawned => {}
        }
        let mut ancestor = Some(parent.clone());
        while let Some(greenlet) = ancestor {
            if greenlet.is(slf) {
                return Err(PyValueError::new_err("cyclic parent chain"));
            }
            ancestor = greenlet.get().parent_bound(slf.py());
        }
        // An unstarted greenlet belongs to no thread yet: its parent's is checked at the start.
        if this.phase() != Phase::Pending && parent.get().thread != this.thread {
            return Err(PyValueError::new_err(
                "parent cannot be on a different thread",
            ));
        }
        let mut slot = this
            .parent
            .try_borrow_mut()
            .ok_or_else(|| GreenletError::new_err("greenlet is busy"))?;
        *slot = Some(parent.unbind());
        Ok(())
    }

    /// True once the greenlet's `run` has finished (or it was killed); a main greenlet, once
    /// its thread has exited.
    #[getter]
    fn dead(&self) -> bool {
        self.is_dead()
    }

    /// Active: started and not dead (a main greenlet, and async_def code, always are).
    fn __bool__(&self) -> bool {
        match self.role {
            Role::Main => !self.thread_exited(),
            Role::AsyncDef => true,
            Role::Spawned => matches!(self.phase(), Phase::Active | Phase::Suspended),
        }
    }

    /// The innermost frame of a suspended greenlet (None for a running one).
    #[getter]
    fn gr_frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.fiber.try_borrow().as_deref() {
            Some(FiberSlot::Started(fiber)) => fiber.top_frame(py),
            _ => Ok(None),
        }
    }

    /// The `contextvars.Context` the greenlet runs in (None: none yet).
    #[getter]
    fn gr_context<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if stands_for(slf, ActiveFiber::running()) {
            return Ok(current_context(py));
        }
        let stored = |cell: &GilCell<Option<Py<PyAny>>>| {
            cell.try_borrow()
                .and_then(|context| context.as_ref().map(|c| c.bind(py).clone()))
                .unwrap_or_else(|| py.None().into_bound(py))
        };
        match this.role {
            Role::Main => Err(GreenletError::new_err(
                "awaitlet's greenlet cannot read gr_context of a main greenlet that is not running",
            )),
            Role::AsyncDef => Ok(py.None().into_bound(py)),
            Role::Spawned => match this.fiber.try_borrow().as_deref() {
                Some(FiberSlot::NotStarted) => Ok(stored(&this.initial_context)),
                Some(FiberSlot::Started(fiber)) if fiber.is_suspended() => Ok(fiber.context(py)),
                Some(FiberSlot::Dead) => Ok(stored(&this.final_context)),
                _ if this.thread != current_thread() => Err(PyValueError::new_err(
                    "cannot get the context of a greenlet that is running in a different thread",
                )),
                _ => Err(GreenletError::new_err(
                    "awaitlet's greenlet cannot read gr_context of a greenlet waiting for another",
                )),
            },
        }
    }

    #[setter]
    fn set_gr_context(slf: &Bound<'_, Self>, context: Bound<'_, PyAny>) -> PyResult<()> {
        check_context(&context)?;
        let this = slf.get();
        if stands_for(slf, ActiveFiber::running()) {
            // SAFETY: checked to be a Context or None above.
            unsafe { set_current_context(&context) };
            return Ok(());
        }
        let refused = |what: &str| {
            Err(GreenletError::new_err(format!(
                "awaitlet's greenlet cannot set gr_context of {what}"
            )))
        };
        match this.role {
            Role::Main => refused("a main greenlet that is not running"),
            Role::AsyncDef => refused("async_def() code that is not running"),
            Role::Spawned => match this.fiber.try_borrow().as_deref() {
                Some(FiberSlot::NotStarted) => {
                    let context = (!context.is_none()).then(|| context.unbind());
                    match this.initial_context.try_borrow_mut() {
                        Some(mut slot) => *slot = context,
                        None => return refused("a greenlet that is being started"),
                    }
                    Ok(())
                }
                Some(FiberSlot::Started(fiber)) if fiber.is_suspended() => {
                    // SAFETY: checked to be a Context or None above.
                    unsafe { fiber.set_context(&context) }
                }
                Some(FiberSlot::Dead) => {
                    if let Some(mut slot) = this.final_context.try_borrow_mut() {
                        *slot = (!context.is_none()).then(|| context.unbind());
                    }
                    Ok(())
                }
                _ if this.thread != current_thread() => Err(PyValueError::new_err(
                    "cannot set the context of a greenlet that is running in a different thread",
                )),
                _ => refused("a greenlet that waits for another"),
            },
        }
    }

    /// Raises an exception in this greenlet where it switched away (GreenletExit by
    /// default, which kills it quietly: the GreenletExit comes back as the result).
    #[pyo3(signature = (typ = None, val = None, tb = None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: Option<Bound<'_, PyAny>>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let typ = typ.unwrap_or_else(|| py.get_type::<GreenletExit>().into_any());
        let throwable = match typ.cast::<pyo3::types::PyType>() {
            Ok(class) => class.is_subclass_of::<pyo3::exceptions::PyBaseException>()?,
            Err(_) => typ.is_instance_of::<pyo3::exceptions::PyBaseException>(),
        };
        if !throwable {
            return Err(PyTypeError::new_err(format!(
                "exceptions must be classes, or instances, not {}",
                typ.get_type().name()?
            )));
        }
        let exc = exception_from_throw_args(py, typ, val, tb)?;
        let this = slf.get();
        // GreenletExit thrown into a dead greenlet comes back as it is.
        if this.is_dead() && exc.is_instance_of::<GreenletExit>(py) {
            return Ok(exc.into_value(py).into_any());
        }
        let payload = Payload::Throw(exc);
        set_switch_origin_current(py)?;
        let method = profiled_method(slf, intern!(py, "throw"));
        switch_to(
            py,
            slf.clone(),
            payload,
            call_of(method.as_ref(), ArgsEnd::UNKNOWN),
        )
    }

    /// Sets an attribute as `object.__setattr__` does (defined because `__delattr__` is).
    fn __setattr__(
        slf: &Bound<'_, Self>,
        name: Bound<'_, PyAny>,
        value: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        // SAFETY: GIL held, valid objects.
        let status =
            unsafe { ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), value.as_ptr()) };
        if status < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// `parent` and `gr_context` cannot be deleted; other attributes are instance attributes.
    fn __delattr__(slf: &Bound<'_, Self>, name: Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(text) = name.extract::<&str>() {
            match text {
                "gr_context" => {
                    return Err(PyAttributeError::new_err("can't delete context attribute"))
                }
                "parent" => return Err(PyAttributeError::new_err("can't delete attribute")),
                "__dict__" => return Err(PyTypeError::new_err("can't delete __dict__")),
                _ => {}
            }
        }
        // SAFETY: GIL held, valid objects; a NULL value deletes the attribute.
        let status = unsafe {
            ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), std::ptr::null_mut())
        };
        if status < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// greenlets cannot be pickled.
    fn __getstate__(slf: &Bound<'_, Self>) -> PyResult<()> {
        Err(PyTypeError::new_err(format!(
            "cannot serialize '{}' object",
            slf.get_type().qualname()?
        )))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        let running = stands_for(slf, ActiveFiber::running());
        let state = match this.role {
            Role::Main if this.thread_exited() => "(thread exited) dead",
            Role::Main if running => "current active started main",
            Role::Main => "suspended active started main",
            Role::AsyncDef if running => "current active started async_def",
            Role::AsyncDef => "suspended active started async_def",
            Role::Spawned => match this.phase() {
                Phase::Pending => "pending",
                Phase::Dead => "dead",
                _ if running => "current active started",
                _ => "suspended active started",
            },
        };
        let class = slf.get_type();
        Ok(format!(
            "<{}.{} object at {:#x} (otid={:#x}) {state}>",
            class.module()?,
            class.qualname()?,
            slf.as_ptr() as usize,
            this.thread
        ))
    }

    /// Kills the greenlet with GreenletExit if it is suspended: the finalizer the collector
    /// runs when the greenlet is garbage. (The class has it as its tp_finalize slot; this
    /// method is how a subclass made by a class statement gets it too.)
    fn __del__(slf: &Bound<'_, Self>) {
        Greenlet::finalize(slf);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the field is read through a volatile load: in zeroed memory (see the field),
        // it is false, and nothing else is read.
        if !unsafe { std::ptr::read_volatile(&self.initialized) } {
            return Ok(());
        }
        if let Some(parent) = self.parent.try_borrow() {
            visit.call(&*parent)?;
        }
        if let Some(context) = self.initial_context.try_borrow() {
            visit.call(&*context)?;
        }
        if let Some(context) = self.final_context.try_borrow() {
            visit.call(&*context)?;
        }
        if let Some(run) = self.run.try_borrow() {
            visit.call(&*run)?;
        }
        if let Some(slot) = self.fiber.try_borrow() {
            if let FiberSlot::Started(fiber) = &*slot {
                fiber.traverse(&visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // A fiber still suspended here could not be killed by the finalizer (it belongs to
        // another thread, or the interpreter is shutting down): its stack is left alone, and
        // leaked when the object is deallocated.
        if let Some(mut parent) = self.parent.try_borrow_mut() {
            *parent = None;
        }
        if let Some(mut context) = self.initial_context.try_borrow_mut() {
            *context = None;
        }
        if let Some(mut context) = self.final_context.try_borrow_mut() {
            *context = None;
        }
        if let Some(mut outgoing) = self.outgoing.try_borrow_mut() {
            *outgoing = None;
        }
        if let Some(mut run) = self.run.try_borrow_mut() {
            *run = None;
        }
    }
}

/// The `run` callable of a greenlet that is starting; an instance attribute is dropped from
/// the instance, as greenlet does, so that it does not outlive the start.
///
/// The stored `run` is dropped here only if it is what the lookup gave (so that nothing can
/// run now); otherwise it is returned, for the new greenlet to drop when it starts, where
/// greenlet drops it too (its finalizer may switch).
fn take_run<'py>(slf: &Bound<'py, Greenlet>) -> PyResult<(Bound<'py, PyAny>, Option<Py<PyAny>>)> {
    let py = slf.py();
    // Looked up as an attribute, as greenlet does: a subclass may intercept it.
    let run = slf.getattr(intern!(py, "run"))?;
    let stored = slf
        .get()
        .run
        .try_borrow_mut()
        .and_then(|mut stored| stored.take());
    Ok(match stored {
        Some(stored) if !stored.is(&run) => (run, Some(stored)),
        _ => (run, None),
    })
}

/// Like greenlet: a suspended greenlet that is garbage is killed with GreenletExit, so its
/// `finally` blocks run; the exception in flight, if any, survives. A fiber that cannot be
/// finished here is left to Fiber's Drop, which hands it to its owner.
fn kill_abandoned(py: Python<'_>, this: &Greenlet, slot: &mut FiberSlot) {
    match slot {
        FiberSlot::Started(fiber) if fiber.can_be_finished_here(py) => fiber.set_closing(),
        _ => return,
    }
    let pending = PyErr::take(py);
    // As in greenlet, the greenlet being killed has its killer for parent until it is dead.
    let killer = current_greenlet(py).ok().map(Bound::unbind);
    let parent = match (killer, this.parent.try_borrow_mut()) {
        (Some(killer), Some(mut parent)) => Some(parent.replace(killer)),
        _ => None,
    };
    let _ = set_switch_origin_current(py);
    let outcome = step(py, this, slot, Resume::Throw(GreenletExit::new_err(())));
    if let Some(parent) = parent {
        if let Some(mut slot) = this.parent.try_borrow_mut() {
            *slot = parent;
        }
    }
    match outcome {
        Step::Finished(Err(err)) if !err.is_instance_of::<GreenletExit>(py) => {
            err.write_unraisable(py, None);
        }
        Step::Finished(_) => {}
        // A closing greenlet cannot switch away (its switches raise instead).
        Step::Suspended(_) => {
            if let Some(mut outgoing) = this.outgoing.try_borrow_mut() {
                *outgoing = None;
            }
        }
    }
    if let Some(pending) = pending {
        pending.restore(py);
    }
}

/// `greenlet.switch(*args, **kwargs)`: switches to the greenlet, handing it the arguments;
/// returns what comes back when something switches to the running greenlet again (or its
/// child finishes).
///
/// `args_end`: where the call's arguments end, when Python code passed them in place (see
/// `ActiveFiber::suspend_in_call`).
fn switch(slf: &Bound<'_, Greenlet>, payload: Payload, args_end: ArgsEnd) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    set_switch_origin_current(py)?;
    let method = profiled_method(slf, intern!(py, "switch"));
    switch_to(py, slf.clone(), payload, call_of(method.as_ref(), args_end))
}

/// `switch()` as CPython calls a method descriptor (`METH_FASTCALL | METH_KEYWORDS`), made by
/// hand rather than with `#[pymethods]`, whose wrapper would collect the arguments into a
/// tuple and hold it until the call returns: held across the suspension, on the greenlet's
/// stack, where nothing can release it if the greenlet never runs again. Here one argument is
/// passed on as it is, and any other shape becomes the tuple and dict the switch hands over.
///
/// # Safety
/// Called through PyO3's trampoline, with what CPython passes to such a method: `slf` an
/// instance of the class the descriptor was made for (CPython checks), `nargs` arguments at
/// `args`, then one value for each name in `kwnames` (a tuple of str, or NULL).
unsafe fn switch_fastcall(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: the descriptor checked that `slf` is a greenlet; borrowed for the call.
    let slf = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<Greenlet>() };
    let positional = usize::try_from(nargs).unwrap_or(0);
    // SAFETY: CPython passes `positional` values, then one per keyword name, valid for the
    // call.
    let value = |index: usize| unsafe { Borrowed::from_ptr(py, *args.add(index)) };
    // SAFETY: NULL or a tuple of str, valid for the call.
    let names = unsafe { Borrowed::from_ptr_or_opt(py, kwnames) }
        // SAFETY: CPython's keyword names are a tuple.
        .map(|names| unsafe { names.cast_unchecked::<PyTuple>() });
    let payload = match &names {
        None if positional == 1 => Payload::Value(value(0).to_owned().unbind()),
        _ => {
            let tuple = PyTuple::new(py, (0..positional).map(value))?;
            let kwargs = match &names {
                Some(names) if !names.is_empty() => {
                    let kwargs = PyDict::new(py);
                    for (index, name) in names.iter().enumerate() {
                        kwargs.set_item(name, value(positional + index))?;
                    }
                    Some(kwargs)
                }
                _ => None,
            };
            Payload::from_call(tuple, kwargs)?
        }
    };
    let count = positional + names.as_ref().map_or(0, |names| names.len());
    switch(&slf, payload, ArgsEnd::of(args, count)).map(Py::into_ptr)
}

/// `switch()` as CPython calls it. The two switches of a greenlet's common round trip take
/// [`fast_switch`], entered without PyO3's trampoline; everything else (and whatever the fast
/// path turns down, before it does anything) takes [`switch_fastcall`], through it.
///
/// # Safety
/// Called by CPython with the GIL held and the arguments of a `METH_FASTCALL |
/// METH_KEYWORDS` method, as described for [`switch_fastcall`].
unsafe extern "C" fn switch_entry(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if kwnames.is_null() && (nargs == 0 || nargs == 1) && TRACERS.load(Ordering::Relaxed) == 0 {
        // SAFETY: as CPython passed them: no keyword argument, `nargs` (0 or 1) positional
        // ones.
        if let Some(result) = unsafe { fast_switch(slf, args, nargs) } {
            return result;
        }
    }
    // SAFETY: the arguments as CPython passed them.
    unsafe { switch_general(slf, args, nargs, kwnames) }
}

/// [`switch_entry`]'s general way: [`switch_fastcall`] through PyO3's trampoline, which tells
/// PyO3 the thread is attached (so that references dropped in the call are released at once,
/// not queued in PyO3's pool) and turns an error or a panic into a raised exception.
///
/// # Safety
/// As for [`switch_entry`].
#[inline(never)]
unsafe fn switch_general(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let general = pyo3::impl_::trampoline::get_trampoline_function!(
        fastcall_cfunction_with_keywords,
        switch_fastcall
    );
    // SAFETY: the arguments as CPython passed them, to the wrapper made for them.
    unsafe { general(slf, args, nargs, kwnames) }
}

/// The fast path of `switch()` with no keyword argument and at most one positional one, while
/// no thread traces switches (`settrace`): a switch into a suspended greenlet
/// ([`switch_into_suspended`]) and a running greenlet's switch back to the greenlet that
/// resumed it ([`switch_back_to_resumer`]), taken only when no switch hook is set either and
/// nothing applies that [`switch_to`] would handle otherwise. Returns None, having done
/// nothing, when it does not apply; else what `switch()` returns (a new reference, or NULL
/// with an exception set).
///
/// Entered without PyO3's trampoline, it runs where PyO3 may not count the thread as attached:
/// it drops no `Py` reference itself (a `Py` dropped there would be queued in PyO3's pool
/// rather than released), and whatever else the switch comes to runs inside [`attached`].
///
/// # Safety
/// As for [`switch_entry`], with no keyword argument and `nargs` 0 or 1.
unsafe fn fast_switch(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> Option<*mut ffi::PyObject> {
    // SAFETY: CPython calls methods with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: the method descriptor checked that `slf` is a greenlet; borrowed for the call,
    // for which the caller keeps it alive.
    let target = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<Greenlet>() };
    // The caller passes `nargs` (0 or 1) valid values at `args`.
    let handed = FastArgs { args, nargs };
    // A panic must not unwind into CPython.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let this = target.get();
        if this.role == Role::Spawned {
            // Not borrowed: not running, nor waiting for a greenlet it resumed.
            if let Some(slot) = this.fiber.try_borrow_mut() {
                return switch_into_suspended(py, target, slot, handed);
            }
        }
        let fiber = ActiveFiber::running()?;
        if !resumed_by(fiber, &target) {
            return None;
        }
        switch_back_to_resumer(py, fiber, &target, handed)
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => Some(raise_attached(py, panic_to_pyerr(payload))),
    }
}

/// The arguments of a `switch()` that takes the fast path: `nargs` (0 or 1) values at `args`,
/// valid for the call.
#[derive(Clone, Copy)]
struct FastArgs {
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
}

impl FastArgs {
    /// What the switch hands over, as the general way makes it (see `Payload::into_result`):
    /// the one argument, or the empty tuple.
    fn value(self, py: Python<'_>) -> Py<PyAny> {
        // SAFETY: GIL held (token), valid objects: the argument (see the type), or the empty
        // tuple, a singleton that is never deallocated.
        unsafe {
            let value = if self.nargs == 1 {
                *self.args
            } else {
                EMPTY_TUPLE.load(Ordering::Relaxed)
            };
            Bound::from_borrowed_ptr(py, value).unbind()
        }
    }

    fn end(self) -> ArgsEnd {
        ArgsEnd::of(self.args, usize::try_from(self.nargs).unwrap_or(0))
    }
}

/// `()`, which CPython keeps as a singleton: what `switch()` without arguments hands over.
/// Set (a reference kept for good) when the class is made, before any switch.
static EMPTY_TUPLE: std::sync::atomic::AtomicPtr<ffi::PyObject> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Gives back `value`, which a fast path made and then could not hand over: a reference
/// released without going through PyO3 (see [`fast_switch`]); it is never the last one.
fn give_back(value: Py<PyAny>) {
    // SAFETY: GIL held (the fast paths run with it); the caller's argument, or the empty
    // tuple, both kept alive by other references.
    unsafe { ffi::Py_DECREF(value.into_ptr()) };
}

/// Whether `target` stands for the greenlet that resumed the running `fiber`: the one that
/// owns (or stands for) the resuming fiber, or a main greenlet, for the thread's own stack
/// (whose thread is checked on the way).
fn resumed_by(fiber: ActiveFiber, target: &Borrowed<'_, '_, Greenlet>) -> bool {
    match fiber.resumer() {
        None => target.get().role == Role::Main,
        Some(resumer) => resumer.greenlet_ptr() == target.as_ptr(),
    }
}

/// `target.switch(value)` from the running greenlet's `fiber` to `target`, the greenlet that
/// resumed it (see [`fast_switch`]): the fiber suspends with the value as what it hands over
/// and no switch requested, which its resumer's pending switch returns (see [`switch_to`] and
/// [`switch_into_suspended`]) as it returns the value that the general way hands it through
/// the request (`switch_down`) when it arrives at `target`. None when [`switch_to`] would do
/// anything else.
fn switch_back_to_resumer(
    py: Python<'_>,
    fiber: ActiveFiber,
    target: &Borrowed<'_, '_, Greenlet>,
    handed: FastArgs,
) -> Option<*mut ffi::PyObject> {
    let this = target.get();
    // What switch_to and switch_down check on their way to suspending the fiber with the
    // switch as its request (the thread, and the hooks, are checked as it suspends).
    let refused = fiber.kind() != Kind::Greenlet
        || fiber.is_closing()
        || fiber.greenlet_ptr().is_null()
        || match this.role {
            Role::Main => this.thread_exited(),
            // A greenlet that resumed another waits in a switch that holds its fiber borrowed
            // (not dead, then).
            Role::Spawned => this.fiber.try_borrow().is_some(),
            Role::AsyncDef => false,
        };
    if refused {
        return None;
    }
    let (resumed, hooks) = match fiber.suspend_unhooked(this.thread, handed.value(py), handed.end())
    {
        Ok(resumed) => resumed,
        Err(value) => {
            give_back(value);
            return None;
        }
    };
    Some(match resumed {
        Resume::Value(value) if !hooks && TRACERS.load(Ordering::Relaxed) == 0 => value.into_ptr(),
        // As suspend_in_call and switch_down go on.
        resumed => attached(py, |py| {
            let resumed = report_resumed(py, handed.end(), resumed);
            c_result(py, arrived(py, resumed.into_result()))
        })
        .unwrap_or(std::ptr::null_mut()),
    })
}

/// `target.switch(value)` into `target`, a spawned greenlet whose fiber (in `slot`) is
/// suspended (see [`fast_switch`]): it is resumed with the value; if it switches back to the
/// running greenlet (no switch requested) what it hands over is returned; anything else goes
/// on as in [`switch_to`] (see [`after_transfer`]). None when [`switch_to`] would not resume
/// it so.
fn switch_into_suspended<'a>(
    py: Python<'_>,
    target: Borrowed<'a, '_, Greenlet>,
    mut slot: RefMut<'a, FiberSlot>,
    handed: FastArgs,
) -> Option<*mut ffi::PyObject> {
    let this = target.get();
    // What switch_to and transfer check on their way to resuming the fiber (a suspended
    // greenlet is neither dead nor the running one; the calling thread state, and the hooks,
    // are checked as it resumes), and what Fiber::resume would do first.
    let FiberSlot::Started(fiber) = &mut *slot else {
        return None;
    };
    if !fiber.is_suspended() || fiber.thread() != this.thread || fiber.owner().get().has_orphans() {
        return None;
    }
    // SAFETY: GIL held; the fiber is suspended and no orphan of its owner waits (both checked
    // just above).
    let outcome = match unsafe { fiber.resume_unhooked(py, Resume::Value(handed.value(py))) } {
        Ok(outcome) => outcome,
        Err(input) => {
            if let Resume::Value(value) = input {
                give_back(value);
            }
            return None;
        }
    };
    Some(match outcome {
        Step::Suspended(value) if this.outgoing.try_borrow().is_some_and(|out| out.is_none()) => {
            drop(slot);
            value.into_ptr()
        }
        outcome => attached(py, move |py| {
            c_result(
                py,
                after_transfer(py, target.to_owned(), slot, outcome, handed.end()),
            )
        })
        .unwrap_or(std::ptr::null_mut()),
    })
}

/// What [`switch_to`] does once the greenlet `target` that it resumed (with its fiber's `slot`
/// borrowed, as [`switch_into_suspended`] did) switched away or finished: a finished greenlet
/// is marked dead, then the switch goes on where the greenlet switched to (or its result goes).
fn after_transfer(
    py: Python<'_>,
    target: Bound<'_, Greenlet>,
    mut slot: RefMut<'_, FiberSlot>,
    outcome: Step,
    call: ArgsEnd,
) -> PyResult<Py<PyAny>> {
    if let Step::Finished(_) = &outcome {
        bury(target.get(), &mut slot);
    }
    drop(slot);
    match onward(py, target, outcome) {
        Onward::To(next, payload) => switch_to(py, next, payload, call),
        Onward::Back(result) => result,
    }
}

/// What a C function returns for `result`: a new reference, or NULL with the exception set.
fn c_result(py: Python<'_>, result: PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    match result {
        Ok(value) => value.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Raises `err` (with the thread counted as attached, see [`attached`]) and returns NULL.
#[cold]
#[inline(never)]
fn raise_attached(py: Python<'_>, err: PyErr) -> *mut ffi::PyObject {
    attached(py, |py| err.restore(py));
    std::ptr::null_mut()
}

static SWITCH_DEF: MethodDef = MethodDef::fastcall_with_keywords(
    c"switch",
    switch_entry,
    c"switch($self, /, *args, **kwargs)
--

Switch to this greenlet, handing it the arguments: the first switch calls its ``run``
with them; a later one returns them from the ``switch()`` it is suspended in (one
argument as itself, else the tuple, or ``(args, kwargs)``). Returns what comes back
when something switches to the calling greenlet again (or a child of it finishes).",
);

/// Puts the hand-made `switch` method (see [`switch_fastcall`]) on the greenlet class.
fn install_switch(class: &Bound<'_, pyo3::types::PyType>) -> PyResult<()> {
    let py = class.py();
    let type_ptr = class.as_type_ptr();
    // SAFETY: GIL held; the definition is a static CPython only reads (the pointer is `*mut`
    // in the signature only); returns a new reference or NULL with an exception set.
    let descriptor = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(type_ptr, SWITCH_DEF.as_ptr()))
    }?;
    // SAFETY: GIL held; the class was created by this module just now, with no instance or
    // subclass yet; a heap type's dict is a dict it owns. It is immutable to Python code, so
    // its dict is written directly, then its method caches are invalidated.
    unsafe {
        let dict = (*type_ptr).tp_dict;
        if dict.is_null()
            || ffi::PyDict_SetItemString(dict, c"switch".as_ptr(), descriptor.as_ptr()) < 0
        {
            return Err(PyErr::take(py)
                .unwrap_or_else(|| PyRuntimeError::new_err("the greenlet class has no dict")));
        }
        ffi::PyType_Modified(type_ptr);
    }
    Ok(())
}

/// Kills a suspended greenlet that became garbage as greenlet does: a throw() of
/// GreenletExit from the running greenlet, which is its parent until the throw returns.
/// Unlike a greenlet killed from Drop (see [`kill_abandoned`]), it may switch away instead
/// of dying: it is left suspended, alive if something took a reference to it meanwhile. What
/// comes back is dropped; an exception other than GreenletExit is reported as unraisable. The
/// exception in flight, if any, survives.
fn kill_by_switch(slf: &Bound<'_, Greenlet>) {
    let py = slf.py();
    let this = slf.get();
    let pending = PyErr::take(py);
    let killer = current_greenlet(py).ok();
    let parent = match (&killer, this.parent.try_borrow_mut()) {
        (Some(killer), Some(mut parent)) => Some(parent.replace(killer.clone().unbind())),
        _ => None,
    };
    if let Some(killer) = &killer {
        set_switch_origin(killer);
    }
    let exit = GreenletExit::new_err("Killing the greenlet because all references have vanished.");
    let outcome = switch_to(py, slf.clone(), Payload::Throw(exit), ArgsEnd::UNKNOWN);
    if let Some(parent) = parent {
        if let Some(mut slot) = this.parent.try_borrow_mut() {
            *slot = parent;
        }
    }
    if let Err(err) = outcome {
        if !err.is_instance_of::<GreenletExit>(py) {
            err.write_unraisable(py, Some(slf.as_any()));
        }
    }
    if let Some(pending) = pending {
        pending.restore(py);
    }
}

impl Drop for Greenlet {
    fn drop(&mut self) {
        // SAFETY: pyclass values are dropped from tp_dealloc, with the GIL held.
        let py = unsafe { Python::assume_attached() };
        if self.role == Role::Main {
            MAIN_GREENLETS.fetch_sub(1, Ordering::Relaxed);
        }
        let mut slot = std::mem::replace(self.fiber.get_mut(), FiberSlot::Dead);
        let FiberSlot::Started(fiber) = &slot else {
            return;
        };
        // The pointer to this object must not outlive it, whatever happens to the fiber.
        fiber.set_owner_greenlet(std::ptr::null_mut());
        kill_abandoned(py, self, &mut slot);
    }
}

impl Greenlet {
    /// What the collector does to a greenlet that is garbage, before it clears anything
    /// (PEP 442), and what happens when its last reference goes: kill it if it is suspended
    /// (see [`kill_abandoned`]). One suspended in another thread that still exists is
    /// resurrected and handed to that thread, which releases it the next time it runs
    /// awaitlet code (`getcurrent()`, say): it is killed and deallocated there, with what its
    /// attributes' finalizers do, as greenlet does.
    fn finalize(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        {
            // Borrowed: the greenlet is running, so it is not garbage after all.
            let Some(slot) = this.fiber.try_borrow() else {
                return;
            };
            let FiberSlot::Started(fiber) = &*slot else {
                return;
            };
            if fiber.is_suspended()
                && fiber.thread() != current_thread()
                && fiber
                    .owner()
                    .get()
                    .adopt_greenlet(slf.clone().into_any().unbind())
            {
                return;
            }
            // Left to Drop, which hands it to its owner.
            if !fiber.can_be_finished_here(py) {
                return;
            }
        }
        kill_by_switch(slf);
    }
}

/// Makes the collector kill garbage greenlets before it clears anything: PEP 442's
/// tp_finalize, which PyO3 has no `__del__` for, set on the class once it exists. A class
/// statement gives a subclass the finalizer its `__del__` method implies, so subclasses find
/// the same through `Greenlet::__del__`.
pub fn install_finalizer(py: Python<'_>) -> PyResult<()> {
    let class = py.get_type::<Greenlet>();
    // Kept for good (one reference to a singleton), before `switch` can be called.
    EMPTY_TUPLE.store(PyTuple::empty(py).into_ptr(), Ordering::Relaxed);
    install_switch(&class)?;
    // SAFETY: the class was created by this module just now: no instance or subclass uses it
    // yet.
    unsafe { crate::set_finalizer(&class, finalize_greenlet) };
    // PyO3's deallocator does not call the finalizer, as a class statement's does: wrap it,
    // so that a greenlet whose last reference goes is finalized (and maybe resurrected, see
    // `Greenlet::finalize`) first.
    // SAFETY: GIL held; the class was just created and has no instance, so nothing runs its
    // deallocator while it is replaced; the original is kept for the wrapper to call.
    unsafe {
        let class = class.as_type_ptr();
        if let Some(original) = (*class).tp_dealloc {
            let _ = PYO3_DEALLOC.set(original);
            (*class).tp_dealloc = Some(dealloc_greenlet);
            ffi::PyType_Modified(class);
        }
    }
    Ok(())
}

/// The deallocator PyO3 made for the greenlet class.
static PYO3_DEALLOC: std::sync::OnceLock<unsafe extern "C" fn(*mut ffi::PyObject)> =
    std::sync::OnceLock::new();

unsafe extern "C" fn dealloc_greenlet(object: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held on an instance whose reference count
    // is zero; PyObject_CallFinalizerFromDealloc is made for this (it returns -1 when the
    // finalizer resurrected the object, which must then stay).
    if unsafe { ffi::PyObject_CallFinalizerFromDealloc(object) } < 0 {
        return;
    }
    if let Some(original) = PYO3_DEALLOC.get() {
        // SAFETY: PyO3's deallocator for this class, called as tp_dealloc would be.
        unsafe { original(object) };
    }
}

unsafe extern "C" fn finalize_greenlet(object: *mut ffi::PyObject) {
    // Attached for PyO3 too, so that what is dropped here is released at once. Not possible
    // while the interpreter shuts down, when a suspended greenlet cannot be killed anyway.
    Python::try_attach(|py| {
        // SAFETY: CPython calls tp_finalize with the GIL held, on a live instance of the class
        // whose slot this is.
        let greenlet = unsafe { Borrowed::from_ptr(py, object).cast_unchecked::<Greenlet>() };
        // A panic must not unwind into CPython.
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Greenlet::finalize(&greenlet);
        })) {
            panic_to_pyerr(payload).write_unraisable(py, Some(&greenlet));
        }
    });
}
