//! What a task's step sets in asyncio around its coroutine: the thread's running loop and the
//! loop's current task, set directly where this interpreter's asyncio keeps them rather than
//! through asyncio's functions, once a check has shown that both ways agree.
//!
//! | CPython | running loop | current task |
//! |---|---|---|
//! | 3.10, 3.11 | a `_RunningLoopHolder` in the thread state's dict: written in place ([`holder`]) | `asyncio.tasks._current_tasks` |
//! | 3.12 | the thread state's dict (read here; set through asyncio, which caches it) | `asyncio.tasks._current_tasks` |
//! | 3.13 | `_PyThreadStateImpl.asyncio_running_loop` (through `pystate.c`) | `asyncio.tasks._current_tasks` |
//! | 3.14+ | `_PyThreadStateImpl.asyncio_running_loop` (through `pystate.c`) | asyncio's functions (it is in the thread state too) |
//!
//! Each direct way is checked once per process against asyncio's own functions (set through
//! them, read here; or the other way round); if they disagree (no C accelerator, another
//! interpreter), asyncio's functions are used.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use super::call;

/// asyncio's functions for what a task's step does around its coroutine (C versions where
/// CPython has them, as `asyncio.events` and `asyncio.tasks` choose).
pub struct StepHooks {
    get_running_loop: Py<PyAny>,
    set_running_loop: Py<PyAny>,
    enter_task: Py<PyAny>,
    leave_task: Py<PyAny>,
    /// `asyncio.tasks._current_tasks`, where it exists.
    current_tasks: Option<Py<PyDict>>,
}

pub fn step_hooks(py: Python<'_>) -> PyResult<&StepHooks> {
    static HOOKS: PyOnceLock<StepHooks> = PyOnceLock::new();
    HOOKS.get_or_try_init(py, || {
        let events = py.import("asyncio.events")?;
        let tasks = py.import("asyncio.tasks")?;
        Ok(StepHooks {
            get_running_loop: events.getattr("_get_running_loop")?.unbind(),
            set_running_loop: events.getattr("_set_running_loop")?.unbind(),
            enter_task: tasks.getattr("_enter_task")?.unbind(),
            leave_task: tasks.getattr("_leave_task")?.unbind(),
            current_tasks: tasks
                .getattr("_current_tasks")
                .ok()
                .and_then(|tasks| tasks.cast_into::<PyDict>().ok())
                .map(Bound::unbind),
        })
    })
}

impl StepHooks {
    fn set_running_loop_to(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        call(event_loop.py(), &self.set_running_loop, &[event_loop]).map(drop)
    }

    fn clear_running_loop(&self, py: Python<'_>) -> PyResult<()> {
        call(py, &self.set_running_loop, &[&py.None().into_bound(py)]).map(drop)
    }

    fn running_loop_is_none(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(call(py, &self.get_running_loop, &[])?.is_none())
    }
}

/// How the running loop is read and set in this process.
enum LoopAccess {
    /// Through asyncio's functions.
    Functions,
    /// In the holder object of this type (3.10, 3.11).
    #[cfg(all(unix, not(Py_3_12)))]
    Holder(Py<pyo3::types::PyType>),
    /// Read in the thread state's dict, set through asyncio's functions (3.12).
    #[cfg(all(Py_3_12, not(Py_3_13)))]
    ThreadDict,
    /// In the thread state (3.13+).
    #[cfg(Py_3_13)]
    ThreadState,
}

static LOOP_ACCESS: PyOnceLock<LoopAccess> = PyOnceLock::new();

/// Checks once, with no loop running, how the running loop can be read and set, by setting
/// `event_loop` as the running loop for a moment (what a step does anyway: code that runs
/// meanwhile, a finalizer, sees it running, as during a step).
fn loop_access<'a>(hooks: &StepHooks, event_loop: &Bound<'_, PyAny>) -> PyResult<&'a LoopAccess> {
    let py = event_loop.py();
    if let Some(access) = LOOP_ACCESS.get(py) {
        return Ok(access);
    }
    let access = check_loop_access(hooks, event_loop)?;
    Ok(LOOP_ACCESS.get_or_init(py, || access))
}

#[cfg(all(unix, not(Py_3_12)))]
fn check_loop_access(hooks: &StepHooks, event_loop: &Bound<'_, PyAny>) -> PyResult<LoopAccess> {
    Ok(holder::checked_type(hooks, event_loop)?.map_or(LoopAccess::Functions, LoopAccess::Holder))
}

/// No holder to write into where `getpid()` is missing from it (Windows).
#[cfg(all(not(unix), not(Py_3_12)))]
fn check_loop_access(_hooks: &StepHooks, _event_loop: &Bound<'_, PyAny>) -> PyResult<LoopAccess> {
    Ok(LoopAccess::Functions)
}

#[cfg(all(Py_3_12, not(Py_3_13)))]
fn check_loop_access(hooks: &StepHooks, event_loop: &Bound<'_, PyAny>) -> PyResult<LoopAccess> {
    Ok(
        if set_through_asyncio_read_here(hooks, event_loop, thread_dict_loop)? {
            LoopAccess::ThreadDict
        } else {
            LoopAccess::Functions
        },
    )
}

#[cfg(Py_3_13)]
fn check_loop_access(hooks: &StepHooks, event_loop: &Bound<'_, PyAny>) -> PyResult<LoopAccess> {
    let py = event_loop.py();
    if !set_through_asyncio_read_here(hooks, event_loop, thread_state_loop)? {
        return Ok(LoopAccess::Functions);
    }
    // And the other way round: set here, read through asyncio.
    set_thread_state_loop(Some(event_loop));
    let seen = call(py, &hooks.get_running_loop, &[]);
    set_thread_state_loop(None);
    Ok(if seen?.is(event_loop) && hooks.running_loop_is_none(py)? {
        LoopAccess::ThreadState
    } else {
        LoopAccess::Functions
    })
}

/// Whether `read` sees the running loop that asyncio's `_set_running_loop()` sets, and no
/// loop once it is cleared (none may be running).
#[cfg(Py_3_12)]
fn set_through_asyncio_read_here(
    hooks: &StepHooks,
    event_loop: &Bound<'_, PyAny>,
    read: for<'py> fn(Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>>,
) -> PyResult<bool> {
    let py = event_loop.py();
    hooks.set_running_loop_to(event_loop)?;
    let while_set = read(py);
    hooks.clear_running_loop(py)?;
    let after = read(py);
    Ok(matches!(while_set?, Some(seen) if seen.is(event_loop)) && after?.is_none())
}

/// The running loop as the thread state's dict has it (3.12): None when none runs.
#[cfg(all(Py_3_12, not(Py_3_13)))]
fn thread_dict_loop(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    let Some(dict) = super::thread_dict(py) else {
        return Ok(None);
    };
    Ok(dict
        .get_item(pyo3::intern!(py, "__asyncio_running_event_loop__"))?
        .filter(|event_loop| !event_loop.is_none()))
}

/// The running loop as the thread state has it (3.13+): None when none runs.
#[cfg(Py_3_13)]
fn thread_state_loop(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    // SAFETY: GIL held; returns a borrowed reference (the thread state holds a strong one) or
    // NULL.
    let event_loop = unsafe { crate::pystate::asyncio_running_loop() };
    // SAFETY: a live object, or NULL; a new reference is taken.
    Ok(unsafe { Bound::from_borrowed_ptr_or_opt(py, event_loop) })
}

/// Sets (or, with None, clears) the running loop in the thread state (3.13+).
#[cfg(Py_3_13)]
fn set_thread_state_loop(event_loop: Option<&Bound<'_, PyAny>>) {
    let event_loop = event_loop.map_or(std::ptr::null_mut(), |event_loop| event_loop.as_ptr());
    // SAFETY: GIL held (the caller has a Python token or a bound reference); a live object or
    // NULL, of which the thread state takes a new reference.
    unsafe { crate::pystate::set_asyncio_running_loop(event_loop) };
}

/// How a step sets the thread's running loop, which none was.
pub enum RunningLoop<'py> {
    /// Through asyncio's `_set_running_loop()`.
    Functions(std::marker::PhantomData<Python<'py>>),
    /// In the thread's holder (3.10, 3.11; see [`holder`]).
    #[cfg(all(unix, not(Py_3_12)))]
    Holder(Bound<'py, PyAny>),
    /// In the thread state (3.13+).
    #[cfg(Py_3_13)]
    ThreadState,
}

impl<'py> RunningLoop<'py> {
    /// How to set `event_loop` as the running loop, or None if a loop runs in the thread
    /// already.
    pub fn none_running(
        hooks: &StepHooks,
        event_loop: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Self>> {
        let py = event_loop.py();
        let access = match LOOP_ACCESS.get(py) {
            Some(access) => access,
            None => {
                // The check sets a loop: only with none running.
                if !hooks.running_loop_is_none(py)? {
                    return Ok(None);
                }
                loop_access(hooks, event_loop)?
            }
        };
        match access {
            LoopAccess::Functions => {}
            #[cfg(all(unix, not(Py_3_12)))]
            LoopAccess::Holder(kind) => match holder::find(py, kind.bind(py))? {
                holder::Found::Idle(holder) => return Ok(Some(Self::Holder(holder))),
                holder::Found::Running => return Ok(None),
                holder::Found::Unknown => {}
            },
            #[cfg(all(Py_3_12, not(Py_3_13)))]
            LoopAccess::ThreadDict => {
                return Ok(thread_dict_loop(py)?
                    .is_none()
                    .then_some(Self::Functions(std::marker::PhantomData)))
            }
            #[cfg(Py_3_13)]
            LoopAccess::ThreadState => {
                return Ok(thread_state_loop(py)?
                    .is_none()
                    .then_some(Self::ThreadState))
            }
        }
        Ok(hooks
            .running_loop_is_none(py)?
            .then_some(Self::Functions(std::marker::PhantomData)))
    }

    /// Makes `event_loop` the running loop.
    pub fn set(&self, hooks: &StepHooks, event_loop: &Bound<'py, PyAny>) -> PyResult<()> {
        match self {
            Self::Functions(_) => hooks.set_running_loop_to(event_loop),
            #[cfg(all(unix, not(Py_3_12)))]
            Self::Holder(holder) => {
                holder::set_loop(holder, event_loop);
                Ok(())
            }
            #[cfg(Py_3_13)]
            Self::ThreadState => {
                set_thread_state_loop(Some(event_loop));
                Ok(())
            }
        }
    }

    /// Clears the running loop that [`Self::set`] set to `event_loop` (or that the step set
    /// since).
    pub fn clear(self, hooks: &StepHooks, event_loop: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = event_loop.py();
        match self {
            Self::Functions(_) => hooks.clear_running_loop(py),
            #[cfg(all(unix, not(Py_3_12)))]
            Self::Holder(holder) => {
                if holder::clear_loop(&holder, event_loop) {
                    Ok(())
                } else {
                    // The step set a running loop of its own: clear it as asyncio does.
                    hooks.clear_running_loop(py)
                }
            }
            #[cfg(Py_3_13)]
            Self::ThreadState => {
                set_thread_state_loop(None);
                Ok(())
            }
        }
    }
}

/// Whether the current task is set directly in `asyncio.tasks._current_tasks` (keyed by
/// loop), which asyncio's functions use (3.10-3.13), rather than through them.
static TASKS_IN_DICT: PyOnceLock<bool> = PyOnceLock::new();

/// `asyncio.tasks._current_tasks`, if the current task is set there directly; checked once,
/// with `event_loop` running and no current task.
fn current_tasks<'a>(
    py: Python<'_>,
    hooks: &'a StepHooks,
    event_loop: &Bound<'_, PyAny>,
    task: &Bound<'_, PyAny>,
) -> PyResult<Option<&'a Py<PyDict>>> {
    let in_dict = match TASKS_IN_DICT.get(py) {
        Some(in_dict) => *in_dict,
        None => {
            let mut agree = false;
            if let Some(current_tasks) = &hooks.current_tasks {
                let current_tasks = current_tasks.bind(py);
                if current_tasks.get_item(event_loop)?.is_none() {
                    call(py, &hooks.enter_task, &[event_loop, task])?;
                    let entered = current_tasks.get_item(event_loop);
                    call(py, &hooks.leave_task, &[event_loop, task])?;
                    agree = matches!(entered?, Some(seen) if seen.is(task))
                        && current_tasks.get_item(event_loop)?.is_none();
                }
            }
            *TASKS_IN_DICT.get_or_init(py, || agree)
        }
    };
    Ok(hooks.current_tasks.as_ref().filter(|_| in_dict))
}

/// Makes `task` the current task of `event_loop`, the running loop, as `_enter_task()` does.
pub fn enter_task(
    hooks: &StepHooks,
    event_loop: &Bound<'_, PyAny>,
    task: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = event_loop.py();
    if let Some(current_tasks) = current_tasks(py, hooks, event_loop, task)? {
        let current_tasks = current_tasks.bind(py);
        if current_tasks.get_item(event_loop)?.is_none() {
            return current_tasks.set_item(event_loop, task);
        }
        // Another task is current: asyncio raises its error.
    }
    call(py, &hooks.enter_task, &[event_loop, task]).map(drop)
}

/// Makes `event_loop` have no current task again, as `_leave_task()` does.
pub fn leave_task(
    hooks: &StepHooks,
    event_loop: &Bound<'_, PyAny>,
    task: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = event_loop.py();
    let in_dict = TASKS_IN_DICT.get(py).copied().unwrap_or(false);
    if let Some(current_tasks) = hooks.current_tasks.as_ref().filter(|_| in_dict) {
        let current_tasks = current_tasks.bind(py);
        if matches!(current_tasks.get_item(event_loop)?, Some(current) if current.is(task)) {
            return current_tasks.del_item(event_loop);
        }
        // Not the current task: asyncio raises its error.
    }
    call(py, &hooks.leave_task, &[event_loop, task]).map(drop)
}

/// asyncio's running loop on CPython 3.10 and 3.11, set without asyncio's
/// `_set_running_loop()`.
///
/// There, the C accelerator (`Modules/_asynciomodule.c`) keeps a thread's running loop in a
/// `_RunningLoopHolder` object (the loop and the process id it was set in, for forked
/// children) under `__asyncio_running_event_loop__` in the thread state's dict, and
/// `_set_running_loop()` makes a new holder at each call, asking the kernel for the process
/// id (`getpid()`) each time: about 150 ns a call here, most of a first step's cost. A step
/// instead writes the loop into the thread's existing holder (made in this process, holding
/// None), and None back after it. `_get_running_loop()` reads the same holder (directly or
/// through its one-entry cache of the last holder set), so it sees what a step set.
///
/// The holder's layout is private to that module: it is checked once, by setting a loop
/// through `_set_running_loop()` and reading it back; if anything differs (another
/// interpreter, no C accelerator), steps use asyncio's functions.
#[cfg(all(unix, not(Py_3_12)))]
mod holder {
    use std::sync::atomic::{AtomicI32, Ordering};

    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::{PyAnyMethods, PyType};

    use super::super::{call, thread_dict};
    use super::StepHooks;

    /// `PyRunningLoopHolder` of CPython 3.7-3.11's `Modules/_asynciomodule.c` (where
    /// `getpid()` exists).
    #[repr(C)]
    struct RunningLoopHolder {
        ob_base: ffi::PyObject,
        rl_loop: *mut ffi::PyObject,
        rl_pid: libc::pid_t,
    }

    /// What the thread's holder says.
    pub enum Found<'py> {
        /// No loop runs: the holder to set one in (of the checked type, made in this
        /// process).
        Idle(Bound<'py, PyAny>),
        /// A loop runs.
        Running,
        /// No holder of the checked kind, or one made before a fork: ask asyncio.
        Unknown,
    }

    /// This process's id, 0 until asked for (and again in a child just forked).
    static PID: AtomicI32 = AtomicI32::new(0);

    extern "C" fn forget_pid() {
        PID.store(0, Ordering::Relaxed);
    }

    fn pid() -> libc::pid_t {
        match PID.load(Ordering::Relaxed) {
            0 => {
                // SAFETY: getpid() has no preconditions.
                let pid = unsafe { libc::getpid() };
                PID.store(pid, Ordering::Relaxed);
                pid
            }
            pid => pid,
        }
    }

    fn key(py: Python<'_>) -> &Bound<'_, pyo3::types::PyString> {
        pyo3::intern!(py, "__asyncio_running_event_loop__")
    }

    /// The thread's holder object, if any.
    fn current(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
        match thread_dict(py) {
            Some(dict) => dict.get_item(key(py)),
            None => Ok(None),
        }
    }

    /// Checks the holder's layout with asyncio's functions (no loop may be running), setting
    /// `probe` as the running loop for a moment: the holder's type, if the layout above fits
    /// it.
    pub fn checked_type(
        hooks: &StepHooks,
        probe: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyType>>> {
        let py = probe.py();
        static AT_FORK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let registered = AT_FORK.get_or_init(|| {
            // SAFETY: pthread_atfork takes three optional handlers; the child's only stores 0
            // (async-signal-safe). Registered once per process; a failure only leaves steps
            // on asyncio's functions.
            unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) == 0 }
        });
        if !*registered {
            return Ok(None);
        }
        hooks.set_running_loop_to(probe)?;
        let set = current(py);
        let read = call(py, &hooks.get_running_loop, &[]);
        hooks.clear_running_loop(py)?;
        let (Some(set), read) = (set?, read?) else {
            return Ok(None);
        };
        let Some(cleared) = current(py)? else {
            return Ok(None);
        };
        let kind = set.get_type();
        // SAFETY: GIL held; a type object's basic size and name, read only.
        let (size, name) = unsafe {
            let raw = kind.as_type_ptr();
            (
                (*raw).tp_basicsize,
                std::ffi::CStr::from_ptr((*raw).tp_name),
            )
        };
        if size != std::mem::size_of::<RunningLoopHolder>() as ffi::Py_ssize_t
            || name.to_bytes() != b"_RunningLoopHolder"
            || !cleared.get_type().is(&kind)
            || !read.is(probe)
        {
            return Ok(None);
        }
        let (set_ptr, cleared_ptr) = (
            set.as_ptr().cast::<RunningLoopHolder>(),
            cleared.as_ptr().cast::<RunningLoopHolder>(),
        );
        // SAFETY: both are of the holder's type, whose size matches the layout above; read
        // only, with the GIL held.
        let fits = unsafe {
            (*set_ptr).rl_loop == probe.as_ptr()
                && (*set_ptr).rl_pid == pid()
                && (*cleared_ptr).rl_loop == ffi::Py_None()
                && (*cleared_ptr).rl_pid == pid()
        };
        Ok(fits.then(|| kind.unbind()))
    }

    /// What the thread's holder says; `kind`: the checked holder type.
    pub fn find<'py>(py: Python<'py>, kind: &Bound<'py, PyType>) -> PyResult<Found<'py>> {
        let Some(holder) = current(py)? else {
            return Ok(Found::Unknown);
        };
        if !holder.get_type().is(kind) {
            return Ok(Found::Unknown);
        }
        let raw = holder.as_ptr().cast::<RunningLoopHolder>();
        // SAFETY: of the checked holder type; read with the GIL held.
        let (holds_none, holder_pid) = unsafe { ((*raw).rl_loop == ffi::Py_None(), (*raw).rl_pid) };
        if holder_pid != pid() {
            return Ok(Found::Unknown);
        }
        if !holds_none {
            return Ok(Found::Running);
        }
        Ok(Found::Idle(holder))
    }

    /// Sets `event_loop` as the loop `holder` holds (it held None).
    pub fn set_loop(holder: &Bound<'_, PyAny>, event_loop: &Bound<'_, PyAny>) {
        let raw = holder.as_ptr().cast::<RunningLoopHolder>();
        // SAFETY: GIL held (the references prove it); `holder` is alive and of the checked
        // holder type (only `find` makes a `Found::Idle`), whose `rl_loop` holds a strong
        // reference: replaced by a new one to `event_loop`, the old one (None) released after.
        unsafe {
            let old = (*raw).rl_loop;
            (*raw).rl_loop = ffi::Py_NewRef(event_loop.as_ptr());
            ffi::Py_DECREF(old);
        }
    }

    /// Puts None back in `holder`, to which [`set_loop`] gave `event_loop`; returns whether
    /// it is still the thread's holder, holding `event_loop` (if not, the step set a running
    /// loop of its own through asyncio, which still runs).
    pub fn clear_loop(holder: &Bound<'_, PyAny>, event_loop: &Bound<'_, PyAny>) -> bool {
        let py = holder.py();
        let raw = holder.as_ptr().cast::<RunningLoopHolder>();
        // SAFETY: GIL held; `holder` is alive (the reference holds it) and of the checked
        // holder type; if it still holds `event_loop`, that strong reference is replaced by
        // one to None (nothing else writes the field: asyncio makes a new holder instead).
        let ours = unsafe {
            let ours = (*raw).rl_loop == event_loop.as_ptr();
            if ours {
                (*raw).rl_loop = ffi::Py_NewRef(ffi::Py_None());
                ffi::Py_DECREF(event_loop.as_ptr());
            }
            ours
        };
        ours && matches!(current(py), Ok(Some(current)) if current.is(holder))
    }
}
