//! Fiber stacks: fixed-size slots carved out of a few very large reserved regions.
//!
//! ```text
//!   region (one memory mapping, MAP_NORESERVE, thousands of slots)
//!   +---------------------+---------------------+---------------------+----
//!   | slot 0              | slot 1              | slot 2              | ...
//!   +---------------------+---------------------+---------------------+----
//!
//!   one slot (STACK_SIZE bytes; only the pages a fiber touches become memory)
//!   low                                                                        high
//!   | canary | red zone |   machine stack  <- grows down <-  | first frames ->   |
//!   ^ bottom            ^ usable_low                         ^ base             ^ top
//!
//! The fiber's first Python frames (CPython's data stack, 3.11+) live at the top of the
//! slot, so a fiber that is a few calls deep touches one page of each.
//! ```
//!
//! A stack per mapping with a guard page costs two memory mappings per fiber, and Linux
//! allows 65,530 by default: fibers would stop near 32,700. Slots in shared regions keep the
//! count of mappings independent of the count of fibers. There is no guard page between
//! slots, so overflow is kept off by CPython's own limits, which the engine sizes for the
//! usable part of the slot (the stack bounds on 3.14+, the C recursion budget on 3.12 and
//! 3.13, call depth on a thread-sized stack before), and checked: the canary, the lowest
//! bytes of a slot, is never written by anything but an overflow, and every switch out of a
//! fiber checks it and aborts the process, loudly, before corrupted memory is used.
//!
//! Finished fibers' slots are reused, per thread first. A slot whose fiber ran deep has its
//! deep pages returned to the system when it is released.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::Mutex;

use corosensei::stack::{Stack, StackPointer};

/// Bytes at the bottom of a slot that only an overflow writes.
const CANARY_BYTES: usize = 64;
/// Space between the canary and the part of the slot the interpreter may use: what a C
/// function called past CPython's stack checks can use before it reaches the canary.
pub const RED_ZONE: usize = 64 * 1024;
/// Depth of stack use kept resident when a slot is reused; deeper pages are released.
const KEEP_RESIDENT: usize = 64 * 1024;
/// Slots per region (the first region is this many; later ones too, unless the system
/// refuses that much address space, then fewer).
const SLOTS_PER_REGION: usize = 4096;
/// Slots a thread keeps for reuse before handing them to the other threads.
const MAX_CACHED_PER_THREAD: usize = 256;

/// A fiber stack: one slot of a region.
pub struct SlotStack {
    bottom: NonNull<u8>,
    size: usize,
    /// Bytes at the top of the slot kept for the fiber's first frames.
    frames_size: usize,
}

// SAFETY: a slot is an exclusive range of memory owned by this value until it is given back.
unsafe impl Send for SlotStack {}

// SAFETY: `base` is the slot's top less the frames area and `limit` its bottom, both
// aligned to 16 (slots are page-aligned, sizes page multiples); the memory between them is
// readable and writable and owned by this value.
unsafe impl Stack for SlotStack {
    fn base(&self) -> StackPointer {
        StackPointer::new(self.frames_area()).expect("non-null slot")
    }

    fn limit(&self) -> StackPointer {
        StackPointer::new(self.bottom.as_ptr() as usize).expect("non-null slot bottom")
    }
}

impl SlotStack {
    /// Start of the memory kept for the fiber's first frames, up to the slot's top.
    pub fn frames_area(&self) -> usize {
        self.bottom.as_ptr() as usize + self.size - self.frames_size
    }

    /// The lowest address the interpreter may consider part of this stack.
    pub fn usable_low(&self) -> usize {
        self.bottom.as_ptr() as usize + CANARY_BYTES + RED_ZONE
    }

    /// The slot's canary, to check after the stack has moved into its coroutine.
    pub fn canary(&self) -> Canary {
        Canary(self.bottom)
    }

    /// Releases the pages below the resident depth if the last fiber reached them, so the
    /// slot is cheap to keep.
    fn trim(&self) {
        let mark = self.bottom.as_ptr() as usize + self.size - KEEP_RESIDENT;
        let words = (mark - 64) as *const u64;
        // SAFETY: inside the slot, mapped readable, 8-aligned.
        let touched = (0..8).any(|index| unsafe { words.add(index).read_volatile() } != 0);
        if touched {
            let length = self.size - KEEP_RESIDENT;
            // SAFETY: a range of this slot's own pages, which nothing runs on any more;
            // MADV_DONTNEED turns them back into zero-fill-on-demand memory.
            unsafe { libc::madvise(self.bottom.as_ptr().cast(), length, libc::MADV_DONTNEED) };
        }
    }
}

/// The lowest bytes of a slot, which only a stack overflow writes.
#[derive(Clone, Copy)]
pub struct Canary(NonNull<u8>);

impl Canary {
    /// Whether nothing wrote past the usable part of the slot.
    #[inline]
    pub fn intact(self) -> bool {
        let words = self.0.as_ptr().cast::<u64>();
        // SAFETY: the canary lies inside a slot, which stays mapped readable for the life of
        // the process; it is read as plain words, aligned because slots are page-aligned.
        (0..CANARY_BYTES / 8).all(|index| unsafe { words.add(index).read_volatile() } == 0)
    }
}

struct Regions {
    /// Slots never used yet, at the end of the newest region.
    next_fresh: usize,
    fresh_end: usize,
    /// Released slots handed over by threads.
    released: Vec<NonNull<u8>>,
}

// SAFETY: the pointers are addresses of slots, which any thread may take ownership of.
unsafe impl Send for Regions {}

static REGIONS: Mutex<Regions> = Mutex::new(Regions {
    next_fresh: 0,
    fresh_end: 0,
    released: Vec::new(),
});

struct ThreadCache(Vec<NonNull<u8>>);

impl Drop for ThreadCache {
    fn drop(&mut self) {
        if let Ok(mut regions) = REGIONS.lock() {
            regions.released.append(&mut self.0);
        }
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const { RefCell::new(ThreadCache(Vec::new())) };
}

/// Reserves a region of `slots` slots of `slot_size` bytes, above one inaccessible page
/// that stops an overflow of its lowest slot; returns the first slot's address, or None if
/// the system refuses.
fn reserve_region(slots: usize, slot_size: usize) -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let length = slots.checked_mul(slot_size)?.checked_add(page)?;
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the first page of the mapping just created; nothing uses it.
    if unsafe { libc::mprotect(address, page, libc::PROT_NONE) } != 0 {
        // SAFETY: unmapping the mapping just created, which nothing uses.
        unsafe { libc::munmap(address, length) };
        return None;
    }
    // Stacks touch a few pages each: huge pages would make every fiber cost 2 MiB. Best
    // effort, the mapping is correct either way.
    // SAFETY: advice on the mapping just created.
    unsafe { libc::madvise(address, length, libc::MADV_NOHUGEPAGE) };
    Some(address as usize + page)
}

/// A stack of `size` bytes (a multiple of the page size) whose top `frames_size` bytes (a
/// multiple of the page size) are kept for frames: a released slot if there is one.
pub fn take(size: usize, frames_size: usize) -> std::io::Result<SlotStack> {
    let cached = CACHE
        .try_with(|cache| cache.borrow_mut().0.pop())
        .ok()
        .flatten();
    let bottom = match cached {
        Some(bottom) => bottom,
        None => {
            let mut regions = REGIONS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match regions.released.pop() {
                Some(bottom) => bottom,
                None => {
                    if regions.next_fresh == regions.fresh_end {
                        let mut slots = SLOTS_PER_REGION;
                        let start = loop {
                            if let Some(start) = reserve_region(slots, size) {
                                break start;
                            }
                            if slots == 1 {
                                return Err(std::io::Error::last_os_error());
                            }
                            slots /= 2;
                        };
                        regions.next_fresh = start;
                        regions.fresh_end = start + slots * size;
                    }
                    let bottom = regions.next_fresh;
                    regions.next_fresh += size;
                    NonNull::new(bottom as *mut u8).expect("mmap never returns address 0")
                }
            }
        }
    };
    Ok(SlotStack {
        bottom,
        size,
        frames_size,
    })
}

/// Gives the memory of a stack that will never run again back to the system, except its
/// frames area, which Python frame objects may still point into; the slot is never reused.
pub fn retire(stack: SlotStack) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // madvise takes whole pages: from the first page boundary at or above the usable part.
    let low = stack.usable_low().next_multiple_of(page);
    let length = stack.frames_area() - low;
    // SAFETY: the machine-stack part of this slot, which nothing runs on any more;
    // MADV_DONTNEED turns it back into zero-fill-on-demand memory.
    unsafe { libc::madvise(low as *mut libc::c_void, length, libc::MADV_DONTNEED) };
}

/// Returns a stack that nothing runs on any more.
pub fn give_back(stack: SlotStack) {
    stack.trim();
    let bottom = stack.bottom;
    let kept = CACHE
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0.len() < MAX_CACHED_PER_THREAD {
                cache.0.push(bottom);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if !kept {
        REGIONS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .released
            .push(bottom);
    }
}
