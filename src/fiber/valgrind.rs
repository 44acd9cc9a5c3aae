//! Tells valgrind where fiber stacks are, so that memcheck sees a switch onto one as a stack
//! switch, not as a frame of megabytes pushed on the thread's stack.
//!
//! Only with the cargo feature `valgrind` (off by default), which compiles `valgrind.c`
//! against valgrind's client-request header; without it both functions do nothing and
//! cost nothing.

/// A stack registration; 0 when nothing was registered.
pub type StackId = u32;

#[cfg(feature = "valgrind")]
mod client {
    use std::ffi::{c_uint, c_void};

    extern "C" {
        pub fn awaitlet_valgrind_stack_register(low: *mut c_void, high: *mut c_void) -> c_uint;
        pub fn awaitlet_valgrind_stack_deregister(id: c_uint);
    }
}

/// Registers the stack occupying the addresses `low..high`.
#[cfg(feature = "valgrind")]
pub fn register(low: usize, high: usize) -> StackId {
    // SAFETY: a client request only records the range (outside valgrind it does nothing);
    // it reads and writes no memory.
    unsafe { client::awaitlet_valgrind_stack_register(low as *mut _, high as *mut _) }
}

/// Forgets a stack registered by [`register`], before its memory serves anything else.
#[cfg(feature = "valgrind")]
pub fn deregister(id: StackId) {
    // SAFETY: as for `register`; an unknown id is ignored by valgrind.
    unsafe { client::awaitlet_valgrind_stack_deregister(id) }
}

/// Registers the stack occupying the addresses `low..high` (without the `valgrind`
/// feature: nothing).
#[cfg(not(feature = "valgrind"))]
#[inline(always)]
pub fn register(_low: usize, _high: usize) -> StackId {
    0
}

/// Forgets a stack registered by [`register`] (without the `valgrind` feature: nothing).
#[cfg(not(feature = "valgrind"))]
#[inline(always)]
pub fn deregister(_id: StackId) {}
