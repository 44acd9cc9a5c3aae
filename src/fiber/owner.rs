//! The thread state a fiber belongs to, and what becomes of its suspended fibers that turn
//! into garbage where they cannot be finished.
//!
//! A fiber runs Python code under the `PyThreadState` that started it: its saved frames, its
//! recursion counters and its exception state are views of that thread state. One OS thread
//! can run Python under several thread states over time (`PyGILState_Ensure` makes a new one
//! per callback on a native thread), so ownership is by thread state, identified by its id
//! (`PyThreadState_GetID`: unique within the interpreter for the life of the process).
//!
//! Each thread state that starts fibers gets one [`FiberOwner`], kept alive by a sentinel in
//! the thread state's dict, whose destruction (when the thread state is cleared) marks the
//! owner gone. A suspended fiber dropped anywhere but under its owner (the last reference
//! dropped by another thread, or under a later thread state of the same OS thread) is handed
//! to its owner as an [`Orphan`]: the owner finishes it (GeneratorExit or GreenletExit
//! thrown in, so `finally` blocks run) the next time it runs awaitlet code; once the owner is
//! gone, nothing can ever run on it again, and it is retired (see [`Orphan::retire`]).

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use pyo3::{ffi, intern};

use super::{Orphan, THREAD};
use crate::gil_cell::GilCell;

/// The id of the calling thread state.
pub fn current_thread_state_id() -> u64 {
    // SAFETY: callers hold the GIL, so there is a current thread state; both calls only read
    // it.
    let id = unsafe { ffi::PyThreadState_GetID(ffi::PyThreadState_Get()) };
    // Ids count up from 1.
    id as u64
}

/// The fibers of one thread state: its id, whether it still exists, and the suspended fibers
/// that became garbage elsewhere and wait for it.
#[pyclass(module = "awaitlet._awaitlet", name = "_FiberOwner", frozen)]
pub struct FiberOwner {
    thread_state: u64,
    alive: AtomicBool,
    has_orphans: AtomicBool,
    orphans: GilCell<Vec<Orphan>>,
    /// Suspended greenlets whose last reference went away on another thread: resurrected
    /// and kept here until this thread state next runs awaitlet code, which releases them,
    /// so that they are killed (and deallocated, finalizers of their attributes included)
    /// here, as greenlet does.
    greenlets: GilCell<Vec<Py<PyAny>>>,
}

impl FiberOwner {
    /// The id of the thread state that owns these fibers.
    pub fn thread_state(&self) -> u64 {
        self.thread_state
    }

    /// Whether the owner's thread state still exists.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Whether suspended fibers wait to be finished by this owner.
    #[inline]
    pub fn has_orphans(&self) -> bool {
        self.has_orphans.load(Ordering::Relaxed)
    }

    /// Takes a suspended fiber dropped where it could not be finished: queued for this owner,
    /// or retired at once if the owner is gone (or the queue cannot grow).
    pub fn adopt(&self, py: Python<'_>, orphan: Orphan) {
        if self.alive.load(Ordering::Relaxed) {
            if let Some(mut orphans) = self.orphans.try_borrow_mut() {
                if orphans.try_reserve(1).is_ok() {
                    orphans.push(orphan);
                    self.has_orphans.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        orphan.retire(py);
    }

    /// Keeps `greenlet`, a suspended greenlet of this owner that became garbage on another
    /// thread, until this owner's thread state releases it (see [`FiberOwner::greenlets`]).
    /// Returns false, keeping nothing, if the owner is gone or the queue cannot grow.
    pub fn adopt_greenlet(&self, greenlet: Py<PyAny>) -> bool {
        if !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        let Some(mut greenlets) = self.greenlets.try_borrow_mut() else {
            return false;
        };
        if greenlets.try_reserve(1).is_err() {
            return false;
        }
        greenlets.push(greenlet);
        self.has_orphans.store(true, Ordering::Relaxed);
        true
    }

    /// Finishes the orphans queued for this owner. Called under the owner's thread state,
    /// where awaitlet code runs and nothing of this module is borrowed.
    pub fn finish_orphans(slf: &Py<Self>, py: Python<'_>) {
        let owner = slf.get();
        let orphans = match owner.orphans.try_borrow_mut() {
            Some(mut orphans) => std::mem::take(&mut *orphans),
            None => return,
        };
        let greenlets = match owner.greenlets.try_borrow_mut() {
            Some(mut greenlets) => std::mem::take(&mut *greenlets),
            None => Vec::new(),
        };
        owner.has_orphans.store(false, Ordering::Relaxed);
        // Whatever exception is being raised around this must survive it, as around any
        // finalizer.
        let pending = PyErr::take(py);
        for orphan in orphans {
            orphan.finish(py, slf);
        }
        // Most likely the last references: each greenlet is killed as it is deallocated.
        drop(greenlets);
        if let Some(pending) = pending {
            pending.restore(py);
        }
    }

    /// The owner's thread state is gone: retire every queued orphan, and every later one.
    fn thread_state_gone(&self, py: Python<'_>) {
        self.alive.store(false, Ordering::Relaxed);
        let orphans = match self.orphans.try_borrow_mut() {
            Some(mut orphans) => std::mem::take(&mut *orphans),
            None => Vec::new(),
        };
        let greenlets = match self.greenlets.try_borrow_mut() {
            Some(mut greenlets) => std::mem::take(&mut *greenlets),
            None => Vec::new(),
        };
        self.has_orphans.store(false, Ordering::Relaxed);
        for orphan in orphans {
            orphan.retire(py);
        }
        // Their fibers can no longer be finished: each is retired as its greenlet goes.
        drop(greenlets);
    }
}

/// Lives in a thread state's dict for as long as the thread state: its destruction tells the
/// owner that the thread state is gone.
#[pyclass(module = "awaitlet._awaitlet", name = "_FiberOwnerSentinel", frozen)]
struct ThreadStateSentinel {
    owner: Py<FiberOwner>,
}

impl Drop for ThreadStateSentinel {
    fn drop(&mut self) {
        // SAFETY: pyclass values are dropped from tp_dealloc, with the GIL held.
        let py = unsafe { Python::assume_attached() };
        let owner = self.owner.get();
        // The calling OS thread's cache must not keep pointing at an owner that may go away
        // with this sentinel.
        let _ = THREAD.try_with(|thread| {
            if thread.owner_id.get() == owner.thread_state {
                thread.owner_id.set(0);
                thread.owner.set(ptr::null_mut());
            }
        });
        owner.thread_state_gone(py);
    }
}

/// The owner of the fibers started under the calling thread state, created on first use.
pub fn current_owner(py: Python<'_>) -> PyResult<Py<FiberOwner>> {
    let id = current_thread_state_id();
    THREAD.with(|thread| {
        if thread.owner_id.get() == id {
            if let Some(owner) = NonNull::new(thread.owner.get()) {
                // SAFETY: the cached owner belongs to the calling thread state (ids are never
                // reused), whose dict keeps it alive through the sentinel; the sentinel resets
                // this cache when it goes.
                return Ok(unsafe { Bound::from_borrowed_ptr(py, owner.as_ptr()) }
                    .cast_into::<FiberOwner>()?
                    .unbind());
            }
        }
        let owner = register_owner(py, id)?;
        thread.owner_id.set(id);
        thread.owner.set(owner.as_ptr());
        Ok(owner)
    })
}

/// Finishes what waits for the calling thread state (see [`FiberOwner::finish_orphans`]), if
/// it has an owner with anything queued.
pub fn finish_pending(py: Python<'_>) {
    let id = current_thread_state_id();
    let owner = THREAD.with(|thread| {
        if thread.owner_id.get() != id {
            return None;
        }
        let owner = NonNull::new(thread.owner.get())?;
        // SAFETY: as in `current_owner`: the cached owner of the calling thread state, alive.
        let owner = unsafe { Bound::from_borrowed_ptr(py, owner.as_ptr()) };
        owner.cast_into::<FiberOwner>().ok().map(Bound::unbind)
    });
    if let Some(owner) = owner {
        if owner.get().has_orphans() {
            FiberOwner::finish_orphans(&owner, py);
        }
    }
}

/// Creates the owner of the calling thread state and puts its sentinel in the thread state's
/// dict (or finds the one already there).
fn register_owner(py: Python<'_>, id: u64) -> PyResult<Py<FiberOwner>> {
    // SAFETY: GIL held; returns a borrowed reference to the calling thread state's dict, or
    // NULL (with no exception set) if it cannot be created.
    let dict = unsafe { ffi::PyThreadState_GetDict() };
    if dict.is_null() {
        return Err(PyErr::take(py).unwrap_or_else(|| {
            pyo3::exceptions::PyMemoryError::new_err("cannot create the thread state's dict")
        }));
    }
    // SAFETY: a valid borrowed dict, kept alive by the thread state during this call.
    let dict = unsafe { Bound::from_borrowed_ptr(py, dict) }.cast_into::<pyo3::types::PyDict>()?;
    let key = intern!(py, "awaitlet.fiber_owner");
    if let Some(existing) = dict.get_item(key)? {
        let sentinel = existing.cast_into::<ThreadStateSentinel>()?;
        let owner = sentinel.get().owner.clone_ref(py);
        if owner.get().thread_state == id {
            return Ok(owner);
        }
    }
    let owner = Py::new(
        py,
        FiberOwner {
            thread_state: id,
            alive: AtomicBool::new(true),
            has_orphans: AtomicBool::new(false),
            orphans: GilCell::new(Vec::new()),
            greenlets: GilCell::new(Vec::new()),
        },
    )?;
    let sentinel = Py::new(
        py,
        ThreadStateSentinel {
            owner: owner.clone_ref(py),
        },
    )?;
    dict.set_item(key, sentinel)?;
    Ok(owner)
}
