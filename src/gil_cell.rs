//! Interior mutability for pyclass state in a build that always has a GIL.

use std::cell::{Ref, RefCell, RefMut};

/// A `RefCell` that a pyclass may hold although pyclasses must be `Send + Sync`.
///
/// A borrow is held for the whole of a call that may switch fibers, so a re-entrant call
/// (from the sync code into its own coroutine, say) finds it borrowed and can be refused.
pub struct GilCell<T>(RefCell<T>);

// SAFETY: the extension only builds for CPython with a GIL (build.rs refuses free-threaded
// builds), so every access happens with the GIL held and is serialized by it. The values
// kept here that are bound to a thread (fibers) are only touched after their owner compared
// the fiber's thread with the calling thread, and a fiber dropped on another thread is
// leaked, never touched.
unsafe impl<T> Send for GilCell<T> {}
// SAFETY: as above: no two threads ever access the cell at the same time.
unsafe impl<T> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    pub fn try_borrow(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }

    pub fn try_borrow_mut(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}
