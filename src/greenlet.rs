//! The greenlet facade's class and `getcurrent()` (exported by `awaitlet.greenlet`).
//!
//! A greenlet here switches only with its parent (the greenlet running when it was created,
//! which is the one that resumes it), which is all SQLAlchemy's and awaitlet's greenlet code
//! needs. There are three kinds of greenlet objects:
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

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{ffi, intern, Borrowed, PyClassInitializer, PyTraverseError, PyVisit};

use crate::coroutine::{exception_from_throw_args, switch_to_resumer};
use crate::exceptions::{GreenletError, GreenletExit};
use crate::fiber::{
    current_thread, panic_to_pyerr, ActiveFiber, ArgsEnd, Fiber, Kind, Resume, Step,
};
use crate::gil_cell::GilCell;
use crate::pystate::{current_context, set_current_context};

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
    /// Running, or waiting for a greenlet it switched into.
    Active,
    Suspended,
    Dead,
}

/// A function running on its own stack that switches with its parent (greenlet's
/// `greenlet` class: `run`, `parent`, `switch`, `throw`, `dead`, `gr_context`, `gr_frame`).
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
    /// Spawned only; borrowed for as long as the fiber runs, so that a re-entrant switch
    /// into it is refused.
    fiber: GilCell<FiberSlot>,
    /// Before a spawned greenlet starts: the context to start in (None: the starter's).
    initial_context: GilCell<Option<Py<PyAny>>>,
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
        }
    }

    fn is_main_of_this_thread(&self) -> bool {
        self.role == Role::Main && self.thread == current_thread()
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

    fn slot(&self) -> PyResult<RefMut<'_, FiberSlot>> {
        self.fiber
            .try_borrow_mut()
            .ok_or_else(|| GreenletError::new_err("greenlet is already running"))
    }

    /// Whether this greenlet's parent is the running greenlet.
    fn parent_is_running(&self, running: Option<ActiveFiber>) -> bool {
        match self.parent.try_borrow().as_deref() {
            Some(Some(parent)) => stands_for_active(parent.get(), parent.as_ptr(), running),
            _ => false,
        }
    }

    /// Starts `run(*args, **kwargs)` on a new fiber; returns what it first switches to its
    /// parent, or its result.
    fn start(
        &self,
        owner: &Bound<'_, Greenlet>,
        run: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = owner.py();
        let mut slot = self.slot()?;
        if !matches!(*slot, FiberSlot::NotStarted) {
            return Err(GreenletError::new_err("greenlet has already started"));
        }
        let kwargs = kwargs.filter(|kwargs| !kwargs.is_empty());
        let fiber = Fiber::calling(
            py,
            Kind::Greenlet,
            run.unbind(),
            args.unbind(),
            kwargs.map(Bound::unbind),
        )?;
        fiber.set_owner_greenlet(owner.as_ptr());
        if let Some(context) = self
            .initial_context
            .try_borrow_mut()
            .and_then(|mut c| c.take())
        {
            // SAFETY: the gr_context setter stores only Contexts here.
            unsafe { fiber.set_context(context.bind(py)) }?;
        }
        *slot = FiberSlot::Started(fiber);
        step(py, &mut slot, Resume::Value(py.None()))
    }

    /// Resumes the suspended fiber with `input`.
    fn resume(&self, py: Python<'_>, input: Resume) -> PyResult<Py<PyAny>> {
        let mut slot = self.slot()?;
        match &*slot {
            FiberSlot::Started(fiber) if fiber.thread() != current_thread() => {
                return Err(different_thread());
            }
            FiberSlot::Started(fiber) if fiber.is_suspended() => {}
            _ => return Err(GreenletError::new_err("greenlet is not suspended")),
        }
        step(py, &mut slot, input)
    }

    /// greenlet hands back the GreenletExit that killed a child instead of raising it.
    fn exit_as_value(&self, py: Python<'_>, result: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        match result {
            Err(err) if err.is_instance_of::<GreenletExit>(py) && self.phase() == Phase::Dead => {
                Ok(err.into_value(py).into_any())
            }
            other => other,
        }
    }

    /// Checks that the running greenlet may switch into (or throw into) this one, its child.
    fn check_switch_into(
        slf: &Bound<'_, Self>,
        running: Option<ActiveFiber>,
        verb: &str,
    ) -> PyResult<()> {
        let this = slf.get();
        if this.role == Role::Spawned && this.parent_is_running(running) {
            return Ok(());
        }
        if this.thread != current_thread() {
            return Err(different_thread());
        }
        if this.role == Role::AsyncDef {
            return Err(GreenletError::new_err(format!(
                "awaitlet's greenlet cannot {verb} into async_def() code; use its coroutine"
            )));
        }
        let current = current_greenlet(slf.py())?;
        Err(GreenletError::new_err(format!(
            "awaitlet's greenlet only switches between a greenlet and its parent; cannot {verb} \
             from {} into {}",
            current.repr()?,
            slf.repr()?
        )))
    }
}

/// Resumes the started fiber in `slot`; marks it dead when it finishes.
fn step(py: Python<'_>, slot: &mut FiberSlot, input: Resume) -> PyResult<Py<PyAny>> {
    let FiberSlot::Started(fiber) = slot else {
        return Err(GreenletError::new_err("greenlet is not suspended"));
    };
    match fiber.resume(py, input) {
        Step::Suspended(value) => Ok(value),
        Step::Finished(result) => {
            *slot = FiberSlot::Dead;
            result
        }
    }
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

/// greenlet's convention for what a switch delivers.
fn pack(args: Bound<'_, PyTuple>, kwargs: Option<Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
    let py = args.py();
    match kwargs.filter(|kwargs| !kwargs.is_empty()) {
        Some(kwargs) => Ok(PyTuple::new(py, [args.into_any(), kwargs.into_any()])?
            .into_any()
            .unbind()),
        None if args.len() == 1 => Ok(args.get_item(0)?.unbind()),
        None => Ok(args.into_any().unbind()),
    }
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
    // SAFETY: GIL held, so this thread has a thread state; the dict is a borrowed
    // reference, NULL only if it could not be created.
    let dict = unsafe { Bound::from_borrowed_ptr_or_err(py, ffi::PyThreadState_GetDict()) }?;
    let dict = dict.cast_into::<PyDict>()?;
    let key = intern!(py, "awaitlet.greenlet.main");
    if let Some(main) = dict.get_item(key)? {
        return Ok(main.cast_into::<Greenlet>()?);
    }
    let main = Bound::new(py, Greenlet::with_role(Role::Main, None))?;
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

/// The greenlet that is running (the thread's main greenlet outside any fiber).
#[pyfunction]
pub fn getcurrent(py: Python<'_>) -> PyResult<Bound<'_, Greenlet>> {
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
        let parent = current_greenlet(py)?.unbind();
        Ok(Self::with_role(Role::Spawned, Some(parent)))
    }

    /// `greenlet(run=None, parent=None)`: `run` is called by the first switch into it;
    /// `parent` (by default the running greenlet) is where it switches back to.
    #[pyo3(signature = (run = None, parent = None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        run: Option<Bound<'_, PyAny>>,
        parent: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if let Some(run) = run {
            slf.setattr(intern!(slf.py(), "run"), run)?;
        }
        if let Some(parent) = parent {
            Self::set_parent(slf, parent)?;
        }
        Ok(())
    }

    /// The running greenlet (the thread's main greenlet outside any fiber).
    #[staticmethod]
    #[pyo3(name = "getcurrent")]
    fn getcurrent_static(py: Python<'_>) -> PyResult<Bound<'_, Greenlet>> {
        current_greenlet(py)
    }

    /// The greenlet this one switches back to (None for a main greenlet).
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
        let parent = parent
            .cast_into::<Greenlet>()
            .map_err(|_| PyTypeError::new_err("parent must be a greenlet"))?;
        let this = slf.get();
        match this.role {
            Role::Main => {
                return Err(GreenletError::new_err(
                    "awaitlet's greenlet cannot give a main greenlet a parent",
                ))
            }
            Role::AsyncDef => {
                return Err(GreenletError::new_err(
                    "awaitlet's greenlet cannot change the parent of async_def() code",
                ))
            }
            Role::Spawned if this.phase() != Phase::Pending => {
                return Err(GreenletError::new_err(
                    "awaitlet's greenlet cannot change the parent of a started greenlet",
                ))
            }
            Role::Spawned => {}
        }
        let mut ancestor = Some(parent.clone());
        while let Some(greenlet) = ancestor {
            if greenlet.is(slf) {
                return Err(PyValueError::new_err("cyclic parent chain"));
            }
            ancestor = greenlet
                .get()
                .parent
                .try_borrow()
                .and_then(|parent| parent.as_ref().map(|parent| parent.bind(slf.py()).clone()));
        }
        let mut slot = this
            .parent
            .try_borrow_mut()
            .ok_or_else(|| GreenletError::new_err("greenlet is busy"))?;
        *slot = Some(parent.unbind());
        Ok(())
    }

    /// True once the greenlet's `run` has finished (or it was killed).
    #[getter]
    fn dead(&self) -> bool {
        self.role == Role::Spawned && self.phase() == Phase::Dead
    }

    /// Active: started and not dead (a main greenlet, and async_def code, always are).
    fn __bool__(&self) -> bool {
        match self.role {
            Role::Main | Role::AsyncDef => true,
            Role::Spawned => matches!(self.phase(), Phase::Active | Phase::Suspended),
        }
    }

    /// The innermost frame of a suspended greenlet.
    #[getter]
    fn gr_frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.fiber.try_borrow().as_deref() {
            Some(FiberSlot::Started(fiber)) => fiber.top_frame(py),
            _ => Ok(None),
        }
    }

    /// The `contextvars.Context` the greenlet runs in.
    #[getter]
    fn gr_context<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if stands_for(slf, ActiveFiber::running()) {
            return Ok(current_context(py));
        }
        match this.role {
            Role::Main => Err(GreenletError::new_err(
                "awaitlet's greenlet cannot read gr_context of a main greenlet that is not running",
            )),
            Role::AsyncDef => Ok(py.None().into_bound(py)),
            Role::Spawned => match this.fiber.try_borrow().as_deref() {
                Some(FiberSlot::NotStarted) => Ok(this
                    .initial_context
                    .try_borrow()
                    .and_then(|context| context.as_ref().map(|c| c.bind(py).clone()))
                    .unwrap_or_else(|| py.None().into_bound(py))),
                Some(FiberSlot::Started(fiber)) if fiber.is_suspended() => Ok(fiber.context(py)),
                Some(FiberSlot::Dead) => Ok(py.None().into_bound(py)),
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
                Some(FiberSlot::Started(fiber))
                    if fiber.is_suspended() && fiber.thread() == current_thread() =>
                {
                    // SAFETY: checked to be a Context or None above.
                    unsafe { fiber.set_context(&context) }
                }
                Some(FiberSlot::Dead) => refused("a dead greenlet"),
                _ => refused("a greenlet that is not suspended on this thread"),
            },
        }
    }

    /// Switches to this greenlet, handing it `args`/`kwargs`; returns what comes back.
    ///
    /// Supported: to the running greenlet itself, to its parent, and to a child (one whose
    /// parent is the running greenlet).
    #[pyo3(signature = (*args, **kwargs))]
    fn switch(
        slf: &Bound<'_, Self>,
        args: Bound<'_, PyTuple>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let running = ActiveFiber::running();
        if stands_for(slf, running) {
            return pack(args, kwargs);
        }
        if let Some(fiber) = running {
            // To the parent of the running greenlet: whatever resumed its fiber.
            if stands_for(slf, fiber.resumer()) {
                let value = pack(args, kwargs)?.into_bound(py);
                return switch_to_resumer(py, fiber, &value, ArgsEnd::UNKNOWN);
            }
        }
        Self::check_switch_into(slf, running, "switch")?;
        let this = slf.get();
        match this.phase() {
            Phase::Dead => pack(args, kwargs),
            Phase::Pending => {
                let run = take_run(slf)?;
                this.exit_as_value(py, this.start(slf, run, args, kwargs))
            }
            Phase::Active | Phase::Suspended => {
                let value = pack(args, kwargs)?;
                this.exit_as_value(py, this.resume(py, Resume::Value(value)))
            }
        }
    }

    /// Raises an exception in this greenlet where it switched away (GreenletExit by
    /// default, which kills it: its GreenletExit comes back as the result).
    #[pyo3(signature = (typ = None, val = None, tb = None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: Option<Bound<'_, PyAny>>,
        val: Option<Bound<'_, PyAny>>,
        tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let typ = typ.unwrap_or_else(|| py.get_type::<GreenletExit>().into_any());
        let exc = exception_from_throw_args(py, typ, val, tb)?;
        let running = ActiveFiber::running();
        if stands_for(slf, running) {
            return Err(exc);
        }
        Self::check_switch_into(slf, running, "throw")?;
        let this = slf.get();
        match this.phase() {
            Phase::Pending | Phase::Dead => {
                if let Some(mut slot) = this.fiber.try_borrow_mut() {
                    *slot = FiberSlot::Dead;
                }
                if exc.is_instance_of::<GreenletExit>(py) {
                    Ok(exc.into_value(py).into_any())
                } else {
                    Err(exc)
                }
            }
            Phase::Active | Phase::Suspended => {
                this.exit_as_value(py, this.resume(py, Resume::Throw(exc)))
            }
        }
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        let state = match this.role {
            Role::Main => "main",
            Role::AsyncDef => "async_def",
            Role::Spawned => match this.phase() {
                Phase::Pending => "pending",
                Phase::Dead => "dead",
                Phase::Suspended => "suspended",
                Phase::Active if stands_for(slf, ActiveFiber::running()) => "current active",
                Phase::Active => "active",
            },
        };
        let class = slf.get_type();
        Ok(format!(
            "<{}.{} object at {:#x} ({state})>",
            class.module()?,
            class.qualname()?,
            slf.as_ptr() as usize
        ))
    }

    /// Kills the greenlet with GreenletExit if it is suspended: the finalizer the collector
    /// runs when the greenlet is garbage. (The class has it as its tp_finalize slot; this
    /// method is how a subclass made by a class statement gets it too.)
    fn __del__(&self, py: Python<'_>) {
        self.finalize(py);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(parent) = self.parent.try_borrow() {
            visit.call(&*parent)?;
        }
        if let Some(context) = self.initial_context.try_borrow() {
            visit.call(&*context)?;
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
    }
}

/// The `run` callable of a greenlet that is starting; an instance attribute is dropped from
/// the instance, as greenlet does, so that it does not outlive the start.
fn take_run<'py>(slf: &Bound<'py, Greenlet>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let key = intern!(py, "run");
    let dict = slf
        .getattr(intern!(py, "__dict__"))?
        .cast_into::<PyDict>()?;
    if let Some(run) = dict.get_item(key)? {
        dict.del_item(key)?;
        return Ok(run);
    }
    slf.getattr(key)
}

/// Like greenlet: a suspended greenlet that is garbage is killed with GreenletExit, so its
/// `finally` blocks run; the exception in flight, if any, survives. A fiber that cannot be
/// finished here is left to Fiber's Drop, which hands it to its owner.
fn kill_abandoned(py: Python<'_>, slot: &mut FiberSlot) {
    match slot {
        FiberSlot::Started(fiber) if fiber.can_be_finished_here(py) => fiber.set_closing(),
        _ => return,
    }
    let pending = PyErr::take(py);
    if let Err(err) = step(py, slot, Resume::Throw(GreenletExit::new_err(()))) {
        if !err.is_instance_of::<GreenletExit>(py) {
            err.write_unraisable(py, None);
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
        let slot = self.fiber.get_mut();
        let FiberSlot::Started(fiber) = slot else {
            return;
        };
        // The pointer to this object must not outlive it, whatever happens to the fiber.
        fiber.set_owner_greenlet(std::ptr::null_mut());
        kill_abandoned(py, slot);
    }
}

impl Greenlet {
    /// What the collector does to a greenlet that is garbage, before it clears anything
    /// (PEP 442): kill it if it is suspended (see [`kill_abandoned`]).
    fn finalize(&self, py: Python<'_>) {
        // Borrowed: the greenlet is running, so it is not garbage after all.
        if let Some(mut slot) = self.fiber.try_borrow_mut() {
            kill_abandoned(py, &mut slot);
        }
    }
}

/// Makes the collector kill garbage greenlets before it clears anything: PEP 442's
/// tp_finalize, which PyO3 has no `__del__` for, set on the class once it exists. A class
/// statement gives a subclass the finalizer its `__del__` method implies, so subclasses find
/// the same through `Greenlet::__del__`.
pub fn install_finalizer(py: Python<'_>) {
    let class = py.get_type::<Greenlet>();
    // SAFETY: the class was created by this module just now: no instance or subclass uses it
    // yet.
    unsafe { crate::set_finalizer(&class, finalize_greenlet) };
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
            greenlet.get().finalize(py);
        })) {
            panic_to_pyerr(payload).write_unraisable(py, Some(&greenlet));
        }
    });
}
