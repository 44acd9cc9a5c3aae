//! Fiber stacks: fixed-size slots carved out of a few very large reserved regions.
//!
//! ```text
//!   region (one memory mapping, MAP_NORESERVE, thousands of slots)
//!   +-------+---------------------+---------------------+---------------------+----
//!   | no    | slot 0              | slot 1              | slot 2              | ...
//!   | access|                     |                     |                     |
//!   +-------+---------------------+---------------------+---------------------+----
//!
//!   one slot (STACK_SIZE bytes; only the pages a fiber touches become memory)
//!   low                                                                           high
//!   | guard | canary | red zone |   machine stack  <- grows down <-  | first frames ->   |
//!   ^ bottom                    ^ usable_low                         ^ base             ^ top
//!
//! The fiber's first Python frames (CPython's data stack, 3.11+) live at the top of the
//! slot, so a fiber that is a few calls deep touches one page of each.
//! ```
//!
//! A stack per mapping with a guard page costs two memory mappings per fiber, and Linux
//! allows 65,530 by default: fibers would stop near 32,700. Slots in shared regions keep the
//! count of mappings independent of the count of fibers.
//!
//! Stacks grow down and slots are carved upward, so a fiber that overflows its slot runs
//! into the top of the slot below, where a suspended fiber keeps its live frames. The
//! lowest [`GUARD_SIZE`] bytes of every slot are therefore made inaccessible when the slot
//! is first carved, and stay so while it is reused: an overflow that CPython's own limits do
//! not stop (they are sized for the usable part of the slot: the stack bounds on 3.14+, the
//! C recursion budget on 3.12 and 3.13, call depth on a thread-sized stack before) dies with
//! SIGSEGV at the guard, as it would on a thread, instead of writing into a neighbour. How
//! the guard is made ([`GuardMode`], `AWAITLET_STACK_GUARDS`):
//!
//! - `madvise(MADV_GUARD_INSTALL)` (Linux 6.13+): guard markers inside the region's mapping,
//!   which do not split it, so a million fibers still take a handful of mappings;
//! - otherwise `mprotect(PROT_NONE)`, which splits the mapping (two more per slot), up to a
//!   budget of an eighth of `vm.max_map_count` guards; past it, and when forced off, slots
//!   have no guard (a one-time RuntimeWarning says so when the budget runs out).
//!
//! A slot without a guard is protected by its canary, the lowest bytes of the slot above the
//! guard's place, which only an overflow writes: every switch out of a fiber on such a slot
//! checks it and aborts the process, loudly, before corrupted memory is used.
//!
//! Finished fibers' slots are reused, per thread first. A thread keeps its few dozen most
//! recently released slots warm (their top [`KEEP_RESIDENT`] bytes stay in memory, so a
//! fiber that starts on one touches no new page) and gives every page of the slots released
//! beyond those back to the system, so that a burst of fibers leaves no memory behind once
//! it has finished.

#[cfg(not(unix))]
compile_error!(
    "awaitlet-rs does not support this platform yet (Windows included): its fiber stacks \
     need mmap and mprotect (Linux and macOS are supported)"
);

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use corosensei::stack::{Stack, StackPointer};

#[cfg(test)]
pub(super) mod tests;

/// Inaccessible bytes at the bottom of every slot: more than a page, so that a C function with
/// a large frame cannot step over the guard without touching it.
const GUARD_SIZE: usize = 64 * 1024;
/// Bytes right above the guard that only an overflow writes.
const CANARY_BYTES: usize = 64;
/// Space between the canary and the part of the slot the interpreter may use: what a C
/// function called past CPython's stack checks can use before it reaches the canary.
pub const RED_ZONE: usize = 64 * 1024;
/// Depth of stack use (from the slot's top) that a warm slot keeps in memory.
const KEEP_RESIDENT: usize = 64 * 1024;
/// Released slots a thread keeps warm; its slots released beyond these lose all their pages.
const WARM_SLOTS_PER_THREAD: usize = 32;
/// Slots a thread keeps for reuse (warm or not) before handing them to the other threads.
const MAX_CACHED_PER_THREAD: usize = 256;
/// Bytes of the page that holds the top of a fiber's machine stack that go to the start of its
/// frames area instead: the frames area starts this far below a page boundary (its end stays
/// below the slot's top), so that a fiber suspended shallow touches fewer pages. Measured
/// with a task suspended 20 Python frames deep (benches/cases/scale.py), where the awaitable's
/// first step runs on the resumer's stack (`ActiveFiber::run_as_resumer`) and the way to the
/// switch keeps small frames: on CPython 3.11-3.13, 2.6 KiB of frames and 1.2-1.3 KiB of
/// machine stack share one page with this split (about 90 bytes to spare on either side);
/// 3.10 keeps its frames on the heap and recurses in C at every Python call, so the split
/// makes no difference there.
#[cfg(not(Py_3_14))]
const FRAMES_IN_STACK_TOP_PAGE: usize = 2720;
/// On 3.14+, 2.7 KiB of frames and 1.7 KiB of machine stack (the evaluation loop's frames are
/// larger) take two pages whatever the split; this one keeps the frames in the top page.
#[cfg(Py_3_14)]
const FRAMES_IN_STACK_TOP_PAGE: usize = 3 * 1024;
/// Slots per region (the first region is this many; later ones too, unless the system
/// refuses that much address space, then fewer).
const SLOTS_PER_REGION: usize = 4096;
/// Address span of one page-table page (512 entries of 4 KiB pages). Slot boundaries are
/// put in the middle of such spans, so that a slot's guard and the top of the slot below,
/// which its fiber uses, share one page-table page instead of needing one each.
const PAGE_TABLE_SPAN: usize = 2 * 1024 * 1024;
/// Selects how guards are made: `auto` (the default), `mprotect` or `none`.
const GUARD_MODE_VARIABLE: &str = "AWAITLET_STACK_GUARDS";

#[cfg(any(target_os = "linux", target_os = "android"))]
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Bytes per slot: the size of a fiber's stack, guard included.
const SLOT_SIZE: usize = super::STACK_SIZE;
const _: () = assert!(SLOT_SIZE % PAGE_TABLE_SPAN == 0 && SLOT_SIZE > 4 * GUARD_SIZE);

/// A slot as the pool keeps it: the address of its bottom, plus one if its lowest
/// [`GUARD_SIZE`] bytes are a guard (not in slots carved with guards turned off or past the
/// `mprotect` budget). Slots are page-aligned, so the low bit is free; one word per slot
/// keeps the per-thread lists as small as a list of addresses.
#[derive(Clone, Copy)]
struct Slot(usize);

impl Slot {
    fn new(bottom: usize, guarded: bool) -> Self {
        Self(bottom | usize::from(guarded))
    }

    fn bottom(self) -> usize {
        self.0 & !1
    }

    fn guarded(self) -> bool {
        self.0 & 1 != 0
    }

    /// The first address above the guard: everything from here up is accessible.
    fn guard_end(self) -> usize {
        self.bottom() + GUARD_SIZE
    }

    /// Releases every page of the slot above its guard (which stays).
    fn release_all_pages(self) {
        release_pages(self.guard_end(), self.bottom() + SLOT_SIZE);
    }
}

/// A fiber stack: one slot of a region.
pub struct SlotStack {
    slot: Slot,
    /// Bytes near the top of the slot kept for the fiber's first frames.
    frames_size: usize,
}

// SAFETY: `base` is the start of the frames area and `limit` the top of its guard, both
// aligned to 16 (slots are page-aligned, the guard a page multiple, the frames area's size and
// offset multiples of 16); the memory between them is readable and writable and owned by
// this value.
unsafe impl Stack for SlotStack {
    fn base(&self) -> StackPointer {
        StackPointer::new(self.frames_area()).expect("non-null slot")
    }

    fn limit(&self) -> StackPointer {
        StackPointer::new(self.guard_end()).expect("non-null slot bottom")
    }
}

impl SlotStack {
    /// Start of the memory kept for the fiber's first frames (`frames_size` bytes, ending
    /// [`FRAMES_IN_STACK_TOP_PAGE`] bytes below the slot's top); the machine stack grows down
    /// from here.
    pub fn frames_area(&self) -> usize {
        self.slot.bottom() + SLOT_SIZE - self.frames_size - FRAMES_IN_STACK_TOP_PAGE
    }

    /// The lowest address the interpreter may consider part of this stack.
    pub fn usable_low(&self) -> usize {
        self.guard_end() + CANARY_BYTES + RED_ZONE
    }

    /// The slot's canary, to check after the stack has moved into its coroutine.
    pub fn canary(&self) -> Canary {
        // With a guard an overflow faults before it can write outside the slot: nothing to
        // check, and no page to read at every switch.
        let canary = self.guard_end() as *mut u8;
        Canary((!self.slot.guarded()).then(|| NonNull::new(canary).expect("non-null slot")))
    }

    fn guard_end(&self) -> usize {
        self.slot.guard_end()
    }

    /// Releases the pages below the resident depth if the last fiber reached them, so that
    /// a warm slot keeps at most [`KEEP_RESIDENT`] bytes. No system call unless it did.
    fn trim_deep_pages(&self) {
        let mark = self.slot.bottom() + SLOT_SIZE - KEEP_RESIDENT;
        let words = (mark - 64) as *const u64;
        // SAFETY: inside the slot above its guard, mapped readable, 8-aligned.
        let touched = (0..8).any(|index| unsafe { words.add(index).read_volatile() } != 0);
        if touched {
            release_pages(self.guard_end(), mark);
        }
    }
}

/// Gives the pages of `[low, high)`, part of a slot that nothing runs on, back to the system.
fn release_pages(low: usize, high: usize) {
    // SAFETY: a page-aligned range of a slot that its owner gave back, above the slot's guard
    // (guard markers would survive MADV_DONTNEED, but an mprotect guard is a different
    // mapping and never part of the range); MADV_DONTNEED turns the pages back into
    // zero-fill-on-demand memory and keeps the mapping. Best effort: the slot is correct
    // either way.
    unsafe { libc::madvise(low as *mut libc::c_void, high - low, libc::MADV_DONTNEED) };
}

/// The lowest bytes of a slot without a guard, which only a stack overflow writes (None for a
/// slot with a guard).
#[derive(Clone, Copy)]
pub struct Canary(Option<NonNull<u8>>);

impl Canary {
    /// Whether nothing wrote past the usable part of the slot.
    #[inline]
    pub fn intact(self) -> bool {
        let Some(canary) = self.0 else {
            return true;
        };
        let words = canary.as_ptr().cast::<u64>();
        // SAFETY: the canary lies inside a slot above its guard, which stays mapped readable
        // for the life of the process; it is read as plain words, aligned because slots are
        // page-aligned.
        (0..CANARY_BYTES / 8).all(|index| unsafe { words.add(index).read_volatile() } == 0)
    }
}

/// How the guards of newly carved slots are made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum GuardMode {
    /// Not decided yet: no slot has been carved.
    Undecided,
    /// Guard markers from `madvise(MADV_GUARD_INSTALL)`, which cost no memory mapping.
    GuardMarkers,
    /// `mprotect(PROT_NONE)`, two more memory mappings per slot, while the budget lasts.
    Mprotect,
    /// No guard: only the canary check protects the slots carved from now on.
    CanaryOnly,
}

struct Regions {
    /// Slots never used yet, at the end of the newest region.
    next_fresh: usize,
    fresh_end: usize,
    /// Released slots handed over by threads; none of their pages are resident.
    released: Vec<Slot>,
    guard_mode: GuardMode,
    /// Guards that `mprotect` may make: a quarter of the process's allowance of memory
    /// mappings, two per guard.
    mprotect_guard_budget: usize,
    mprotect_guards_made: usize,
}

static REGIONS: Mutex<Regions> = Mutex::new(Regions {
    next_fresh: 0,
    fresh_end: 0,
    released: Vec::new(),
    guard_mode: GuardMode::Undecided,
    mprotect_guard_budget: 0,
    mprotect_guards_made: 0,
});

/// Warnings for Python's `warnings` module, each posted once; a flag, read with one relaxed
/// load per fiber, says whether there are any, so that the common case takes no lock.
static WARNINGS_PENDING: AtomicBool = AtomicBool::new(false);
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn post_warning(message: String) {
    let mut warnings = WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    warnings.push(message);
    WARNINGS_PENDING.store(true, Ordering::Relaxed);
}

/// A message about the stacks' guards that the caller should issue as a RuntimeWarning.
pub fn take_warning() -> Option<String> {
    if !WARNINGS_PENDING.load(Ordering::Relaxed) {
        return None;
    }
    let mut warnings = WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let message = (!warnings.is_empty()).then(|| warnings.remove(0));
    WARNINGS_PENDING.store(!warnings.is_empty(), Ordering::Relaxed);
    message
}

impl Regions {
    /// The mode the environment asks for, with the `mprotect` budget it needs.
    fn choose_guard_mode(&mut self) {
        let requested = std::env::var(GUARD_MODE_VARIABLE).unwrap_or_default();
        self.guard_mode = match requested.as_str() {
            "" | "auto" => GuardMode::GuardMarkers,
            "mprotect" => GuardMode::Mprotect,
            "none" => GuardMode::CanaryOnly,
            other => {
                post_warning(format!(
                    "awaitlet: ignoring {GUARD_MODE_VARIABLE}={other:?} (expected auto, \
                     mprotect or none); fiber stacks get guard pages as with auto"
                ));
                GuardMode::GuardMarkers
            }
        };
        if !cfg!(any(target_os = "linux", target_os = "android"))
            && self.guard_mode == GuardMode::GuardMarkers
        {
            self.guard_mode = GuardMode::Mprotect;
        }
        // Each mprotect guard splits a region's mapping into two more: spend at most a
        // quarter of the process's allowance on them.
        self.mprotect_guard_budget = max_map_count() / 4 / 2;
    }

    /// Makes the lowest [`GUARD_SIZE`] bytes of the fresh slot at `bottom` inaccessible, as
    /// far as the mode allows; whether it did.
    fn install_guard(&mut self, bottom: usize) -> bool {
        if self.guard_mode == GuardMode::Undecided {
            self.choose_guard_mode();
        }
        if self.guard_mode == GuardMode::GuardMarkers {
            if guard_markers(bottom) {
                return true;
            }
            // A kernel before Linux 6.13 answers EINVAL: fall back for good.
            self.guard_mode = GuardMode::Mprotect;
        }
        if self.guard_mode == GuardMode::Mprotect {
            if self.mprotect_guards_made < self.mprotect_guard_budget {
                // SAFETY: the lowest bytes of a fresh slot of a region we mapped; nothing
                // uses them, and nothing but an overflow ever will.
                let protected = unsafe {
                    libc::mprotect(bottom as *mut libc::c_void, GUARD_SIZE, libc::PROT_NONE)
                } == 0;
                if protected {
                    self.mprotect_guards_made += 1;
                    return true;
                }
            }
            self.guard_mode = GuardMode::CanaryOnly;
            post_warning(format!(
                "awaitlet: the budget of {} memory mappings for fiber stack guards made with \
                 mprotect is spent (guard markers, Linux 6.13+, are unavailable or turned \
                 off); an overflow of a fiber stack carved from now on is caught only by the \
                 canary check, which aborts the process when the fiber switches out",
                self.mprotect_guard_budget * 2
            ));
        }
        false
    }
}

/// Guard markers on the lowest [`GUARD_SIZE`] bytes of a fresh slot; false if the system
/// has none.
fn guard_markers(bottom: usize) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: the lowest bytes of a fresh slot of a private anonymous mapping we made;
        // nothing uses them. The markers make them fault on access without splitting the
        // mapping.
        unsafe { libc::madvise(bottom as *mut libc::c_void, GUARD_SIZE, MADV_GUARD_INSTALL) == 0 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = bottom;
        false
    }
}

/// The process's allowance of memory mappings (Linux's `vm.max_map_count`, 65,530 by
/// default; the same figure where there is no such setting).
fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(65_530)
}

/// A thread's released slots, most recently released last.
struct ThreadCache {
    /// Slots that keep the pages their last fiber touched near the top.
    warm: Vec<Slot>,
    /// Slots without resident pages.
    cold: Vec<Slot>,
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        let mut regions = REGIONS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for slot in &self.warm {
            slot.release_all_pages();
        }
        // Out of memory, the slots are lost (their pages are released): never an abort.
        if regions
            .released
            .try_reserve(self.warm.len() + self.cold.len())
            .is_ok()
        {
            regions.released.append(&mut self.warm);
            regions.released.append(&mut self.cold);
        }
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const {
        RefCell::new(ThreadCache { warm: Vec::new(), cold: Vec::new() })
    };
}

/// Reserves a region of `slots` slots, above inaccessible memory that
/// stops an overflow of its lowest slot; returns the first slot's address, or None if the
/// system refuses.
fn reserve_region(slots: usize) -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // Room below the first slot for at least a page and for moving slot boundaries to the
    // middle of a page-table span.
    let length = slots
        .checked_mul(SLOT_SIZE)?
        .checked_add(page + PAGE_TABLE_SPAN)?;
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
    // The lowest address at least a page into the mapping that lies half a span past a
    // span boundary; slots are multiples of the span, so every slot boundary does.
    let half_span = PAGE_TABLE_SPAN / 2;
    let first_slot = (address as usize + page + PAGE_TABLE_SPAN - 1 - half_span) / PAGE_TABLE_SPAN
        * PAGE_TABLE_SPAN
        + half_span;
    // Stacks touch a few pages each: huge pages would make every fiber cost 2 MiB. Best
    // effort, the mapping is correct either way. (Linux's transparent huge pages; macOS
    // backs anonymous memory with small pages.)
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: advice on the mapping just created.
        unsafe { libc::madvise(address, length, libc::MADV_NOHUGEPAGE) };
    }
    // SAFETY: the start of the mapping just created, below the first slot; nothing uses it.
    if unsafe { libc::mprotect(address, first_slot - address as usize, libc::PROT_NONE) } != 0 {
        // SAFETY: unmapping the mapping just created, which nothing uses.
        unsafe { libc::munmap(address, length) };
        return None;
    }
    Some(first_slot)
}

/// A stack of [`super::STACK_SIZE`] bytes with `frames_size` bytes (a multiple of 16) near its
/// top kept for frames (see [`SlotStack::frames_area`]): a released slot if there is one.
pub fn take(frames_size: usize) -> std::io::Result<SlotStack> {
    let cached = CACHE
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            cache.warm.pop().or_else(|| cache.cold.pop())
        })
        .ok()
        .flatten();
    let slot = match cached {
        Some(slot) => slot,
        None => {
            let mut regions = REGIONS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match regions.released.pop() {
                Some(slot) => slot,
                None => carve_fresh_slot(&mut regions)?,
            }
        }
    };
    Ok(SlotStack { slot, frames_size })
}

/// A slot never used before, with its guard, from a new region if the newest is used up.
fn carve_fresh_slot(regions: &mut Regions) -> std::io::Result<Slot> {
    if regions.next_fresh == regions.fresh_end {
        let mut slots = SLOTS_PER_REGION;
        let start = loop {
            if let Some(start) = reserve_region(slots) {
                break start;
            }
            if slots == 1 {
                return Err(std::io::Error::last_os_error());
            }
            slots /= 2;
        };
        regions.next_fresh = start;
        regions.fresh_end = start + slots * SLOT_SIZE;
    }
    let bottom = regions.next_fresh;
    regions.next_fresh += SLOT_SIZE;
    let guarded = regions.install_guard(bottom);
    Ok(Slot::new(bottom, guarded))
}

/// Gives the memory of a stack that will never run again back to the system, except its
/// frames area, which Python frame objects may still point into; the slot is never reused.
pub fn retire(stack: SlotStack) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // madvise takes whole pages: from the first page boundary at or above the usable part to
    // the last one at or below the frames area (the page holding its start is kept).
    let low = stack.usable_low().next_multiple_of(page);
    let length = (stack.frames_area() / page * page).saturating_sub(low);
    // SAFETY: the machine-stack part of this slot, which nothing runs on any more;
    // MADV_DONTNEED turns it back into zero-fill-on-demand memory.
    unsafe { libc::madvise(low as *mut libc::c_void, length, libc::MADV_DONTNEED) };
}

/// Returns a stack that nothing runs on any more.
pub fn give_back(stack: SlotStack) {
    stack.trim_deep_pages();
    let slot = stack.slot;
    let kept = CACHE
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.warm.try_reserve(1).is_err() {
                slot.release_all_pages();
                give_to_other_threads(slot);
                return;
            }
            cache.warm.push(slot);
            if cache.warm.len() <= WARM_SLOTS_PER_THREAD {
                return;
            }
            // One system call per release beyond the warm set, none while a thread runs
            // fewer fibers at once than that (and the shift of a few dozen entries is
            // nothing next to it).
            let coldest = cache.warm.remove(0);
            coldest.release_all_pages();
            if cache.warm.len() + cache.cold.len() < MAX_CACHED_PER_THREAD
                && cache.cold.try_reserve(1).is_ok()
            {
                cache.cold.push(coldest);
            } else {
                give_to_other_threads(coldest);
            }
        })
        .is_ok();
    if !kept {
        // The thread is exiting: its cache is gone.
        slot.release_all_pages();
        give_to_other_threads(slot);
    }
}

/// Puts a slot without resident pages on the list every thread takes from (out of memory,
/// the slot is lost rather than the process aborted: only its address space goes with it).
fn give_to_other_threads(slot: Slot) {
    let mut regions = REGIONS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if regions.released.try_reserve(1).is_ok() {
        regions.released.push(slot);
    }
}
