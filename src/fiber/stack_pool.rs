//! Per-thread pool of fiber stacks.
//!
//! Mapping a fresh stack costs two system calls and a page fault for every page the fiber
//! touches; a finished fiber's stack goes back to its thread's pool instead, so a steady
//! stream of short `async_def` calls maps no memory at all.

use std::cell::RefCell;

use corosensei::stack::DefaultStack;

/// Stacks kept per thread beyond those in use.
const MAX_POOLED: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

/// A stack of `size` bytes: a pooled one if this thread has one.
pub fn take(size: usize) -> std::io::Result<DefaultStack> {
    match POOL.try_with(|pool| pool.borrow_mut().pop()) {
        Ok(Some(stack)) => Ok(stack),
        _ => DefaultStack::new(size),
    }
}

/// Returns a stack that nothing runs on any more to this thread's pool.
pub fn give_back(stack: DefaultStack) {
    // During thread teardown the pool may be gone; the stack is then simply unmapped.
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(stack);
        }
    });
}
