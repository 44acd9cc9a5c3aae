//! What a task's step sets in asyncio around its coroutine: the thread's running loop and the
//! loop's current task, set directly where this interpreter's asyncio keeps them rather than
//! through asyncio's functions, once a check has shown that both ways agree.
//!
//! | CPython | running loop | current task |
//! |---|---|---|
//! | 3.10, 3.11 | asyncio's functions (see below) | `asyncio.tasks._current_tasks` |
//! | 3.12 | the thread state's dict (read here; set through asyncio, which caches it) | `asyncio.tasks._current_tasks` |
//! | 3.13 | `_PyThreadStateImpl.asyncio_running_loop` (through `pystate.c`) | `asyncio.tasks._current_tasks` |
//! | 3.14+ | `_PyThreadStateImpl.asyncio_running_loop` (through `pystate.c`) | asyncio's functions (it is in the thread state too) |
//!
//! Each direct way is checked once per process against asyncio's own functions (set through
//! them, read here; or the other way round); if they disagree (no C accelerator, another
//! interpreter), asyncio's functions are used.
//!
//! On 3.10 and 3.11 the running loop stays with asyncio's `_set_running_loop()`, though it
//! allocates a holder object and calls `getpid()` at each call: that holder's layout is
//! private to `Modules/_asynciomodule.c`, in no header this crate is compiled against.

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

/// Through asyncio's functions only (see the module's doc).
#[cfg(not(Py_3_12))]
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
