//! The stack pool without Python: how slots are carved, reused, kept warm, trimmed and
//! retired; their guards (checked by touching them in a forked child), their canaries, and
//! regions that the system only partly grants.
//!
//! Every test holds [`serial`] and does its pool work in threads of its own (joined before
//! the lock goes), so each starts with an empty per-thread cache and none sees another's
//! slots move through the shared list.

use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};

use corosensei::stack::Stack;
use corosensei::{Coroutine, CoroutineResult, Yielder};

use super::*;
use crate::fiber::tests::{in_fresh_thread, serial};

/// Bytes kept for the first frames in these tests: a page multiple, as the callers ask.
const FRAMES: usize = 16 * 1024;

fn read(address: usize) -> u8 {
    // SAFETY: callers pass an address above a slot's guard, mapped readable for the life of
    // the process.
    unsafe { (address as *const u8).read_volatile() }
}

fn write(address: usize, value: u8) {
    // SAFETY: callers pass an address above the guard of a slot they own, mapped writable.
    unsafe { (address as *mut u8).write_volatile(value) }
}

/// How a forked child that runs `body` ended: `Ok(exit status)` or `Err(signal)`.
///
/// The child must not allocate or take locks (other threads may hold them at the fork): it
/// only touches memory and exits.
fn in_child(body: impl FnOnce() -> i32) -> Result<i32, i32> {
    // SAFETY: the child runs only `body`, which touches memory and makes system calls, then
    // `_exit`s without returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit; the child's expected crashes must not write core files.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let status = catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
        // SAFETY: ends the child at once, running no destructor or exit handler of the copy
        // of the test process it is.
        unsafe { libc::_exit(status) }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}

/// Whether reading the byte at `address` kills a (forked) process with SIGSEGV.
fn faults(address: usize) -> bool {
    match in_child(|| {
        black_box(read(address));
        0
    }) {
        Err(libc::SIGSEGV) => true,
        Ok(0) => false,
        other => panic!("reading {address:#x} in a child ended with {other:?}"),
    }
}

/// The line of `/proc/self/maps` of the mapping that contains `address`: (start, end,
/// permissions).
fn mapping_of(address: usize) -> (usize, usize, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        if (start..end).contains(&address) {
            return (start, end, perms.to_owned());
        }
    }
    panic!("{address:#x} is in no mapping");
}

/// The address of the canary a [`Canary`] checks (None: its slot has a guard instead).
pub(in crate::fiber) fn canary_address(canary: Canary) -> Option<usize> {
    canary.0.map(|canary| canary.as_ptr() as usize)
}

fn guard_mode() -> GuardMode {
    REGIONS.lock().unwrap().guard_mode
}

fn cached_counts() -> (usize, usize) {
    CACHE.with(|cache| {
        let cache = cache.borrow();
        (cache.warm.len(), cache.cold.len())
    })
}

fn top(stack: &SlotStack) -> usize {
    stack.slot.bottom() + SLOT_SIZE
}

#[test]
fn slots_are_laid_out_as_documented() {
    let _serial = serial();
    in_fresh_thread(|| {
        let stacks: Vec<SlotStack> = (0..8).map(|_| take(FRAMES).unwrap()).collect();
        for stack in &stacks {
            let bottom = stack.slot.bottom();
            // Slot boundaries sit in the middle of a page-table span.
            assert_eq!(bottom % PAGE_TABLE_SPAN, PAGE_TABLE_SPAN / 2);
            assert_eq!(stack.limit().get(), bottom + GUARD_SIZE);
            assert_eq!(
                stack.base().get(),
                top(stack) - FRAMES - FRAMES_IN_STACK_TOP_PAGE
            );
            assert_eq!(stack.frames_area(), stack.base().get());
            // The page holding the frames area's start holds the machine stack's top too.
            assert_eq!(
                stack.frames_area() % 4096,
                4096 - FRAMES_IN_STACK_TOP_PAGE % 4096
            );
            assert_eq!(
                stack.usable_low(),
                bottom + GUARD_SIZE + CANARY_BYTES + RED_ZONE
            );
            assert_eq!(stack.base().get() % 16, 0);
            assert_eq!(stack.limit().get() % 16, 0);
            // Everything from the guard's end to the slot's top is usable memory.
            for address in [stack.limit().get(), top(stack) - 1] {
                write(address, 0x5a);
                assert_eq!(read(address), 0x5a);
                write(address, 0);
            }
        }
        let mut bottoms: Vec<usize> = stacks.iter().map(|stack| stack.slot.bottom()).collect();
        bottoms.sort_unstable();
        for pair in bottoms.windows(2) {
            assert!(pair[1] - pair[0] >= SLOT_SIZE, "slots overlap: {pair:x?}");
        }
        stacks.into_iter().for_each(give_back);
    });
}

#[test]
fn a_thread_reuses_its_released_slots_last_in_first_out() {
    let _serial = serial();
    in_fresh_thread(|| {
        let first = take(FRAMES).unwrap();
        let first_bottom = first.slot.bottom();
        give_back(first);
        assert_eq!(cached_counts(), (1, 0));
        let again = take(FRAMES).unwrap();
        assert_eq!(again.slot.bottom(), first_bottom);
        assert_eq!(cached_counts(), (0, 0));

        let other = take(FRAMES).unwrap();
        let other_bottom = other.slot.bottom();
        assert_ne!(other_bottom, first_bottom);
        give_back(again);
        give_back(other);
        assert_eq!(take(FRAMES).unwrap().slot.bottom(), other_bottom);
        assert_eq!(take(FRAMES).unwrap().slot.bottom(), first_bottom);
    });
}

#[test]
fn slots_released_beyond_the_warm_set_lose_their_pages() {
    let _serial = serial();
    in_fresh_thread(|| {
        let extra = 3;
        let stacks: Vec<SlotStack> = (0..WARM_SLOTS_PER_THREAD + extra)
            .map(|_| take(FRAMES).unwrap())
            .collect();
        // A byte in the frames area and one at the top of the machine stack of each.
        let marks: Vec<[usize; 2]> = stacks
            .iter()
            .map(|stack| [top(stack) - 1, stack.base().get() - 8])
            .collect();
        for address in marks.iter().flatten() {
            write(*address, 0xa5);
        }
        stacks.into_iter().for_each(give_back);

        assert_eq!(cached_counts(), (WARM_SLOTS_PER_THREAD, extra));
        for (index, addresses) in marks.iter().enumerate() {
            let expected = if index < extra { 0 } else { 0xa5 };
            for address in addresses {
                assert_eq!(read(*address), expected, "slot released {index}th");
            }
        }
        // Warm slots are taken before cold ones, the most recently released first.
        let next = take(FRAMES).unwrap();
        assert_eq!(top(&next) - 1, marks.last().unwrap()[0]);
        give_back(next);
    });
}

#[test]
fn a_thread_keeps_a_bounded_number_of_slots_and_hands_over_the_rest() {
    let _serial = serial();
    let shared_before = REGIONS.lock().unwrap().released.len();
    let count = MAX_CACHED_PER_THREAD + 10;
    in_fresh_thread(|| {
        let stacks: Vec<SlotStack> = (0..count).map(|_| take(FRAMES).unwrap()).collect();
        // (The fresh thread took its first slots from the shared list, if it had any.)
        let shared_after_take = REGIONS.lock().unwrap().released.len();
        stacks.into_iter().for_each(give_back);
        assert_eq!(
            cached_counts(),
            (
                WARM_SLOTS_PER_THREAD,
                MAX_CACHED_PER_THREAD - WARM_SLOTS_PER_THREAD
            )
        );
        let handed_over = REGIONS.lock().unwrap().released.len() - shared_after_take;
        assert_eq!(handed_over, count - MAX_CACHED_PER_THREAD);
    });
    // At its exit the thread handed every cached slot over too.
    assert_eq!(
        REGIONS.lock().unwrap().released.len(),
        shared_before.max(count)
    );
}

#[test]
fn thread_exit_releases_the_pages_of_its_warm_slots() {
    let _serial = serial();
    let (bottom, mark) = in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        let mark = stack.base().get() - 8;
        write(mark, 0xa5);
        let bottom = stack.slot.bottom();
        give_back(stack);
        assert_eq!(read(mark), 0xa5, "a warm slot keeps its top pages");
        (bottom, mark)
    });
    let released = REGIONS.lock().unwrap().released.clone();
    assert_eq!(released.last().map(|slot| slot.bottom()), Some(bottom));
    assert_eq!(read(mark), 0);
    // Another thread gets it from the shared list.
    let taken = in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        let taken = stack.slot.bottom();
        give_back(stack);
        taken
    });
    assert_eq!(taken, bottom);
}

#[test]
fn release_trims_the_pages_deeper_than_the_resident_depth() {
    let _serial = serial();
    in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        let mark = stack.slot.bottom() + SLOT_SIZE - KEEP_RESIDENT;
        let shallow = stack.base().get() - 8;
        // A fiber that went deeper than the resident depth passed the mark words.
        let deep = [mark - 8, stack.usable_low() + 4096];
        write(shallow, 0xa5);
        for address in deep {
            write(address, 0xa5);
        }
        let bottom = stack.slot.bottom();
        give_back(stack);
        assert_eq!(read(shallow), 0xa5, "the resident depth stays");
        for address in deep {
            assert_eq!(
                read(address),
                0,
                "deep page at {address:#x} was not released"
            );
        }
        // The trimmed slot is still the warm one reused next.
        let stack = take(FRAMES).unwrap();
        assert_eq!(stack.slot.bottom(), bottom);
        give_back(stack);
    });
}

#[test]
fn a_retired_slot_keeps_its_frames_area_and_is_never_reused() {
    let _serial = serial();
    in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        let bottom = stack.slot.bottom();
        let frames = [stack.frames_area(), stack.frames_area() + FRAMES - 1];
        // Below the page that holds the frames area's start (kept with it).
        let machine = [
            stack.frames_area() / 4096 * 4096 - 8,
            stack.usable_low() + 4096,
        ];
        for address in frames.into_iter().chain(machine) {
            write(address, 0xa5);
        }
        retire(stack);
        for address in frames {
            assert_eq!(read(address), 0xa5, "frame objects may still point into it");
        }
        for address in machine {
            assert_eq!(read(address), 0);
        }
        assert_eq!(cached_counts(), (0, 0));
        let others: Vec<SlotStack> = (0..4).map(|_| take(FRAMES).unwrap()).collect();
        assert!(others.iter().all(|stack| stack.slot.bottom() != bottom));
        others.into_iter().for_each(give_back);
    });
}

#[test]
fn the_guard_faults_from_carving_through_reuse() {
    let _serial = serial();
    let bottom = in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        if guard_mode() == GuardMode::CanaryOnly {
            eprintln!("guards are off (AWAITLET_STACK_GUARDS=none?): nothing to check");
            give_back(stack);
            return None;
        }
        if guard_mode_automatic() && kernel_has_guard_markers() {
            assert_eq!(guard_mode(), GuardMode::GuardMarkers);
        }
        let bottom = stack.slot.bottom();
        assert!(stack.slot.guarded());
        assert!(faults(bottom));
        assert!(faults(bottom + GUARD_SIZE - 1));
        assert!(!faults(bottom + GUARD_SIZE));
        // Warm reuse, then a release of all its pages (what a cold slot gets).
        give_back(stack);
        let stack = take(FRAMES).unwrap();
        assert_eq!(stack.slot.bottom(), bottom);
        assert!(faults(bottom + GUARD_SIZE - 1));
        stack.slot.release_all_pages();
        assert!(faults(bottom + GUARD_SIZE - 1));
        assert!(!faults(bottom + GUARD_SIZE));
        give_back(stack);
        Some(bottom)
    });
    let Some(bottom) = bottom else { return };
    // Handed over at the thread's exit and taken by another thread: still guarded.
    in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        assert_eq!(stack.slot.bottom(), bottom);
        assert!(stack.slot.guarded());
        assert!(faults(bottom));
        give_back(stack);
    });
}

/// Whether the kernel makes guard markers (`MADV_GUARD_INSTALL`, Linux 6.13+), tried on a
/// scratch mapping.
fn kernel_has_guard_markers() -> bool {
    // SAFETY: a new private anonymous mapping of our own, unmapped below.
    let scratch = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(scratch, libc::MAP_FAILED);
    // SAFETY: the first page of that mapping, which nothing uses.
    let made = unsafe { libc::madvise(scratch, 4096, MADV_GUARD_INSTALL) } == 0;
    // SAFETY: unmapping the scratch mapping, which nothing uses.
    unsafe { libc::munmap(scratch, 2 * 4096) };
    made
}

/// Whether the environment leaves the choice of guards to the pool.
fn guard_mode_automatic() -> bool {
    matches!(
        std::env::var(GUARD_MODE_VARIABLE).as_deref(),
        Err(_) | Ok("") | Ok("auto")
    )
}

/// A pool of its own, deciding guards as `mode` says, with an `mprotect` budget of `budget`.
fn private_regions(mode: GuardMode, budget: usize) -> Regions {
    Regions {
        next_fresh: 0,
        fresh_end: 0,
        released: Vec::new(),
        guard_mode: mode,
        mprotect_guard_budget: budget,
        mprotect_guards_made: 0,
    }
}

fn drain_warnings() -> Vec<String> {
    std::iter::from_fn(take_warning).collect()
}

#[test]
fn guard_markers_do_not_split_the_mapping() {
    let _serial = serial();
    if !kernel_has_guard_markers() {
        eprintln!("this kernel has no guard markers (Linux 6.13+): skipped");
        return;
    }
    let mut regions = private_regions(GuardMode::GuardMarkers, 0);
    // Leaked: address space only.
    let first = reserve_region(2).expect("reserve a region");
    assert!(regions.install_guard(first));
    assert_eq!(regions.guard_mode, GuardMode::GuardMarkers);
    // One mapping from the region's first slot (the inaccessible space below it is another)
    // to past its last.
    let (start, end, perms) = mapping_of(first);
    assert!(
        start == first && end >= first + 2 * SLOT_SIZE,
        "split: {start:#x}-{end:#x}"
    );
    assert_eq!(perms, "rw-p");
    assert!(faults(first));
    assert!(faults(first + GUARD_SIZE - 1));
    assert!(!faults(first + GUARD_SIZE));
    // Releasing the pages above keeps the markers.
    Slot::new(first, true).release_all_pages();
    assert!(faults(first + GUARD_SIZE - 1));
}

#[test]
fn mprotect_guards_stop_at_their_budget_then_slots_rely_on_the_canary() {
    let _serial = serial();
    drain_warnings();
    let mut regions = private_regions(GuardMode::Mprotect, 1);
    // Leaked: address space only.
    let first = reserve_region(3).expect("reserve a region");
    let slots = [first, first + SLOT_SIZE, first + 2 * SLOT_SIZE];

    assert!(regions.install_guard(slots[0]));
    assert_eq!(regions.guard_mode, GuardMode::Mprotect);
    // The guard is a mapping of its own (merged with the inaccessible space below the
    // region), the rest of the slot another.
    let (_, guard_end, guard_perms) = mapping_of(slots[0]);
    assert_eq!(
        (guard_end, guard_perms.as_str()),
        (slots[0] + GUARD_SIZE, "---p")
    );
    let (rest_start, _, rest_perms) = mapping_of(slots[0] + GUARD_SIZE);
    assert_eq!(
        (rest_start, rest_perms.as_str()),
        (slots[0] + GUARD_SIZE, "rw-p")
    );
    assert!(faults(slots[0] + GUARD_SIZE - 1));
    assert!(!faults(slots[0] + GUARD_SIZE));
    assert!(drain_warnings().is_empty());

    assert!(!regions.install_guard(slots[1]));
    assert_eq!(regions.guard_mode, GuardMode::CanaryOnly);
    assert_eq!(mapping_of(slots[1]).2, "rw-p");
    assert!(!faults(slots[1]));
    let warnings = drain_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("budget of 2 memory mappings"),
        "{warnings:?}"
    );

    // The warning is given once.
    assert!(!regions.install_guard(slots[2]));
    assert!(drain_warnings().is_empty());
    assert_eq!(regions.mprotect_guards_made, 1);
}

#[test]
fn the_canary_is_checked_on_unguarded_slots_only() {
    let _serial = serial();
    // Leaked: address space only.
    let bottom = reserve_region(1).expect("reserve a region");
    let unguarded = SlotStack {
        slot: Slot::new(bottom, false),
        frames_size: FRAMES,
    };
    let canary = unguarded.canary();
    assert_eq!(
        canary.0.map(|canary| canary.as_ptr() as usize),
        Some(bottom + GUARD_SIZE)
    );
    assert!(canary.intact());
    for offset in [0, CANARY_BYTES - 1] {
        write(bottom + GUARD_SIZE + offset, 1);
        assert!(!canary.intact(), "a write at canary offset {offset}");
        write(bottom + GUARD_SIZE + offset, 0);
        assert!(canary.intact());
    }
    // The red zone above it is the fiber's to use.
    write(bottom + GUARD_SIZE + CANARY_BYTES, 1);
    assert!(canary.intact());
    write(bottom + GUARD_SIZE + CANARY_BYTES, 0);

    let guarded = SlotStack {
        slot: Slot::new(bottom, true),
        frames_size: FRAMES,
    };
    assert!(guarded.canary().0.is_none());
    assert!(guarded.canary().intact());
}

/// Recurses with 1 KiB frames full of nonzero bytes until a frame lies below `stop_below`,
/// then suspends; returns the depth reached.
fn descend<Input>(yielder: &Yielder<Input, usize>, stop_below: usize, depth: usize) -> usize {
    let mut frame = [0xa5u8; 1024];
    black_box(&mut frame);
    let reached = if (frame.as_ptr() as usize) < stop_below {
        yielder.suspend(depth);
        depth
    } else {
        descend(yielder, stop_below, depth + 1)
    };
    // Uses the frame after the call, so that the recursion is not a tail call.
    reached + usize::from(black_box(frame[0]) == 0)
}

#[test]
fn an_overflow_into_an_unguarded_slots_canary_is_detected() {
    let _serial = serial();
    // Leaked: address space only.
    let bottom = reserve_region(1).expect("reserve a region");
    let stack = SlotStack {
        slot: Slot::new(bottom, false),
        frames_size: FRAMES,
    };
    let canary = stack.canary();
    let guard_end = stack.guard_end();
    let mut coroutine = Coroutine::with_stack(stack, |yielder, _: usize| {
        let target = yielder.suspend(0);
        descend(yielder, target, 0)
    });
    // A shallow fiber leaves the canary alone; one that runs past the usable part of the
    // slot and into the canary breaks it.
    assert!(matches!(coroutine.resume(0), CoroutineResult::Yield(0)));
    assert!(canary.intact());
    let CoroutineResult::Yield(depth) = coroutine.resume(guard_end) else {
        panic!("the descent must suspend");
    };
    // Frames of a little over 1 KiB, through most of 8 MiB.
    assert!(depth > 4000, "depth {depth}");
    assert!(!canary.intact());
    assert!(matches!(coroutine.resume(0), CoroutineResult::Return(_)));
    let stack = coroutine.into_stack();
    release_pages(stack.slot.bottom(), top(&stack));
    assert!(canary.intact());
}

#[test]
fn an_overflow_of_a_guarded_slot_dies_at_the_guard() {
    let _serial = serial();
    in_fresh_thread(|| {
        let stack = take(FRAMES).unwrap();
        if !stack.slot.guarded() {
            eprintln!("guards are off (AWAITLET_STACK_GUARDS=none?): nothing to check");
            give_back(stack);
            return;
        }
        let ended = in_child(|| {
            // The child's own view of the slot (the parent keeps `stack`).
            let child_stack = SlotStack {
                slot: stack.slot,
                frames_size: FRAMES,
            };
            let mut coroutine =
                Coroutine::with_stack(child_stack, |yielder, ()| descend(yielder, 0, 0));
            // Never reached: no frame lies below address 0.
            match coroutine.resume(()) {
                CoroutineResult::Yield(_) | CoroutineResult::Return(_) => 1,
            }
        });
        assert_eq!(ended, Err(libc::SIGSEGV));
        // The child's writes were its own: the slot is as it was.
        assert_eq!(read(stack.base().get() - 8), 0);
        give_back(stack);
    });
}

/// The `VmSize` of the calling process, in bytes, read without allocating.
fn address_space_in_use() -> usize {
    use std::io::Read;
    let mut buffer = [0u8; 8192];
    let mut file = std::fs::File::open("/proc/self/status").expect("open /proc/self/status");
    let mut length = 0;
    while let Ok(read @ 1..) = file.read(&mut buffer[length..]) {
        length += read;
    }
    let text = std::str::from_utf8(&buffer[..length]).expect("ASCII");
    let line = text
        .lines()
        .find(|line| line.starts_with("VmSize:"))
        .expect("a VmSize line");
    let kib: usize = line
        .trim_start_matches("VmSize:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number");
    kib * 1024
}

/// Carves a slot in a forked child allowed `room` more bytes of address space; the child's
/// exit status is the number of slots of the region it got (at most 254), or 255 if the
/// system refused even one.
fn carve_with_room(room: usize) -> Result<i32, i32> {
    in_child(|| {
        let limit = address_space_in_use() + room;
        let limit = libc::rlimit {
            rlim_cur: limit as libc::rlim_t,
            rlim_max: limit as libc::rlim_t,
        };
        // SAFETY: a valid rlimit, for this child only.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            return 250;
        }
        // No guards: nothing here depends on how they are made.
        let mut regions = private_regions(GuardMode::CanaryOnly, 0);
        match carve_fresh_slot(&mut regions) {
            Ok(slot) => {
                let slots = (regions.fresh_end - slot.bottom()) / SLOT_SIZE;
                i32::try_from(slots.min(254)).unwrap()
            }
            Err(_) => 255,
        }
    })
}

#[test]
fn a_region_shrinks_to_what_the_system_grants_and_failure_is_an_error() {
    let _serial = serial();
    // Room for a region of 8 slots (with its alignment margin), not 16.
    let slots = carve_with_room(100 * 1024 * 1024).expect("the child must exit");
    assert!(
        (1..=8).contains(&slots) && (slots as u32).is_power_of_two(),
        "got a region of {slots} slots"
    );
    assert_eq!(slots, 8, "nothing else should have used the room");
    // No room for one slot: an error, not an abort.
    assert_eq!(carve_with_room(SLOT_SIZE / 2), Ok(255));
}
