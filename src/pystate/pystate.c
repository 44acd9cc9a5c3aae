/*
 * The interpreter state that must follow a fiber across a stack switch.
 *
 * One OS thread has one PyThreadState.  Several fibers run on that thread, each on its own
 * machine stack, and only one of them runs at a time.  The PyThreadState fields that say
 * *where execution is* (the frame chain, the frame data stack, recursion counters, the
 * exception being handled, the current context, C stack bounds, ...) belong to the running
 * fiber, so on every switch they are saved for the fiber leaving and restored for the fiber
 * entering.  Everything else (the exception in flight, trace functions, the thread dict,
 * asyncio's running loop) stays with the thread.
 *
 * This file is the only place that knows CPython's private layouts.  It is compiled against
 * the headers of the exact interpreter the extension is built for (build.rs), and every
 * version difference is one of the AWAITLET_* flags below, kept in the same order in
 * save/load/init/finish.
 *
 *     parent stack                       fiber stack
 *     ------------                       -----------
 *     awaitlet_enter_fiber(s)  ------->  (first time: initial state, else the saved one)
 *       save parent into s->parent        ... Python code runs ...
 *       load s->fiber (or init)          awaitlet_leave_fiber(s)
 *                              <-------    save fiber into s->fiber, load s->parent
 *                                        awaitlet_finish_fiber(s)   (fiber returns)
 *                              <-------    release fiber resources, load s->parent
 *
 * No function here allocates Python objects or runs Python code while the thread state is
 * half switched: a garbage collection in the middle of a switch could run finalizers that
 * switch again.
 */
#include <Python.h>

#if PY_VERSION_HEX < 0x030A0000 || PY_VERSION_HEX >= 0x03100000
#  error "awaitlet supports CPython 3.10 to 3.15"
#endif
#ifdef Py_GIL_DISABLED
#  error "free-threaded CPython builds are not supported"
#endif

/* 3.11: frames moved to a per-thread data stack (datastack_*), recursion became a
 * countdown (recursion_remaining), Python-to-Python calls stopped recursing in C. */
#define AWAITLET_PY311 (PY_VERSION_HEX >= 0x030B0000)
/* 3.12: separate Python and C recursion counters; cframe lost use_tracing (PEP 669);
 * the trashcan state moved into tstate->trash. */
#define AWAITLET_PY312 (PY_VERSION_HEX >= 0x030C0000)
/* 3.13: cframe removed, tstate->current_frame; trashcan nesting replaced by a check of the
 * remaining C recursion, delete_later moved to tstate. */
#define AWAITLET_PY313 (PY_VERSION_HEX >= 0x030D0000)
/* 3.14: C recursion is measured against the machine stack bounds kept in
 * _PyThreadStateImpl (python/cpython#139653); the JIT's current_executor. */
#define AWAITLET_PY314 (PY_VERSION_HEX >= 0x030E0000)

/* 3.10-3.12 link a chain of C-stack-allocated cframes from the thread state. */
#define AWAITLET_USE_CFRAME (!AWAITLET_PY313)
/* 3.10-3.11 cache "is tracing on" in the current cframe. */
#define AWAITLET_CFRAME_TRACING (!AWAITLET_PY312)

#if AWAITLET_PY311
/* The C stack bounds (3.14+) live only in the private _PyThreadStateImpl, and the layout of
 * _PyInterpreterFrame, whose references the collector must be shown for a suspended fiber,
 * only in the internal frame headers. */
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE 1
#  endif
#  if AWAITLET_PY314
#    include "internal/pycore_tstate.h"
#    include "internal/pycore_interpframe.h"
#    include "internal/pycore_stackref.h"
#  else
#    include "internal/pycore_frame.h"
#  endif
#  if AWAITLET_PY313 && !AWAITLET_PY314
/* asyncio's running loop (see "asyncio's running loop" below). */
#    include "internal/pycore_tstate.h"
#  endif
#else
/* 3.10's PyFrameObject layout, for the same reason. */
#  include "frameobject.h"
#endif

/* 3.12+: whether the profiler's sys.monitoring tool listens, and its callbacks, are in the
 * private PyInterpreterState (see "Trace and profile hooks across switches"). */
#if AWAITLET_PY312
#  if AWAITLET_PY314
#    include "internal/pycore_interp_structs.h"
#  else
/* Python.h, included before Py_BUILD_CORE was defined, made this a macro for the public
 * function; the internal header defines it as an inline function of the same meaning. */
#    undef _PyGC_FINALIZED
#    include "internal/pycore_interp.h"
#  endif
#  include "internal/pycore_instruments.h"
#endif

#if AWAITLET_USE_CFRAME && AWAITLET_PY311
typedef _PyCFrame awaitlet_cframe;
#elif AWAITLET_USE_CFRAME
typedef CFrame awaitlet_cframe;
#endif

#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

/* The frame data stack chunk a fiber starts with.  Larger frames get chunks of their own
 * from CPython, which frees them again as they return. */
#define AWAITLET_ROOT_CHUNK_SIZE (16 * 1024)

/* The fields that describe where execution is, for one side of a switch. */
typedef struct {
    PyObject *context; /* the strong reference the thread state held */
    _PyErr_StackItem *exc_info;
#if AWAITLET_USE_CFRAME
    awaitlet_cframe *cframe;
#endif
#if AWAITLET_PY311
    struct _PyInterpreterFrame *current_frame;
    _PyStackChunk *datastack_chunk;
    PyObject **datastack_top;
    PyObject **datastack_limit;
#else
    PyFrameObject *frame;
#endif
    /* Python recursion depth, stored as a depth so that a recursion limit changed while
     * this side was switched out applies on return. */
    int recursion_depth;
#if AWAITLET_PY312 && !AWAITLET_PY314
    int c_recursion_remaining;
#endif
#if !AWAITLET_PY313
    int trash_delete_nesting;
#endif
#if AWAITLET_PY314
    PyObject *current_executor;
    uintptr_t c_stack_top;
    uintptr_t c_stack_soft_limit;
    uintptr_t c_stack_hard_limit;
    uintptr_t c_stack_init_base;
    uintptr_t c_stack_init_top;
#endif
} awaitlet_saved;

typedef struct awaitlet_fiber_state {
    awaitlet_saved parent; /* the side that resumed the fiber, while the fiber runs */
    awaitlet_saved fiber;  /* the fiber, while it is suspended (and its initial state) */
    /* The fiber's own bottom "exception being handled" item, with no link to the
     * resumer's: like a greenlet, sync code starts handling nothing, so an exception it
     * raises never gets the driver's (SQLAlchemy resumes it from an except block) as its
     * __context__. */
    _PyErr_StackItem exc_root;
#if AWAITLET_USE_CFRAME
    /* The fiber's bottom cframe: the eval loop links its own to tstate->cframe and writes
     * through it on return, so it must outlive the fiber's first Python call. */
    awaitlet_cframe base_cframe;
#endif
#if AWAITLET_PY311
    _PyStackChunk *root_chunk; /* lent by the caller of awaitlet_fiber_state_new */
#endif
#if AWAITLET_PY312 && !AWAITLET_PY314
    int c_recursion_budget;
#endif
    /* The context a fiber that has not started yet will run in (a strong reference), set
     * through awaitlet_fiber_set_context; NULL means the resumer's current context. */
    PyObject *initial_context;
#if !AWAITLET_PY314
    /* While the fiber is suspended in a function its innermost frame called with CPython's
     * vectorcall convention: where that call's arguments end, or NULL.  Before 3.14 a frame
     * that is executing a call keeps its stack top in a C local of the evaluation loop
     * (stacktop / f_stackdepth say -1), so this is the only way to know which value-stack
     * slots hold references at the suspension point (see traverse_frames). */
    PyObject *const *call_args_end;
#endif
    int started;
} awaitlet_fiber_state;

static inline PyThreadState *
current_tstate(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#else
    return _PyThreadState_UncheckedGet();
#endif
}

#if AWAITLET_PY314
static inline _PyThreadStateImpl *
tstate_impl(PyThreadState *ts)
{
    return (_PyThreadStateImpl *)ts;
}
#endif

static inline int
python_recursion_depth(PyThreadState *ts)
{
#if AWAITLET_PY312
    return ts->py_recursion_limit - ts->py_recursion_remaining;
#elif AWAITLET_PY311
    return ts->recursion_limit - ts->recursion_remaining;
#else
    return ts->recursion_depth;
#endif
}

/* Moves the thread state's fields into `out`.  The strong reference to the context moves
 * with them: the caller loads another state right away. */
static void
save(awaitlet_saved *out, PyThreadState *ts)
{
    out->context = ts->context;
    out->exc_info = ts->exc_info;
#if AWAITLET_USE_CFRAME
    out->cframe = ts->cframe;
#endif
#if AWAITLET_PY313
    out->current_frame = ts->current_frame;
#elif AWAITLET_PY311
    out->current_frame = ts->cframe->current_frame;
#else
    out->frame = ts->frame;
#endif
#if AWAITLET_PY311
    out->datastack_chunk = ts->datastack_chunk;
    out->datastack_top = ts->datastack_top;
    out->datastack_limit = ts->datastack_limit;
#endif
    out->recursion_depth = python_recursion_depth(ts);
#if AWAITLET_PY312 && !AWAITLET_PY314
    out->c_recursion_remaining = ts->c_recursion_remaining;
#endif
#if AWAITLET_PY312 && !AWAITLET_PY313
    out->trash_delete_nesting = ts->trash.delete_nesting;
#elif !AWAITLET_PY313
    out->trash_delete_nesting = ts->trash_delete_nesting;
#endif
#if AWAITLET_PY314
    out->current_executor = ts->current_executor;
    _PyThreadStateImpl *impl = tstate_impl(ts);
    out->c_stack_top = impl->c_stack_top;
    out->c_stack_soft_limit = impl->c_stack_soft_limit;
    out->c_stack_hard_limit = impl->c_stack_hard_limit;
    out->c_stack_init_base = impl->c_stack_init_base;
    out->c_stack_init_top = impl->c_stack_init_top;
#endif
}

/* Moves `in` into the thread state (the inverse of save). */
static void
load(const awaitlet_saved *in, PyThreadState *ts)
{
    ts->context = in->context;
    /* Context variable lookups are cached per (thread state, version): invalidate. */
    ts->context_ver++;
    ts->exc_info = in->exc_info;
#if AWAITLET_USE_CFRAME
    ts->cframe = in->cframe;
#endif
#if AWAITLET_PY313
    ts->current_frame = in->current_frame;
#elif AWAITLET_PY311
    ts->cframe->current_frame = in->current_frame;
#else
    ts->frame = in->frame;
#endif
#if AWAITLET_PY311
    ts->datastack_chunk = in->datastack_chunk;
    ts->datastack_top = in->datastack_top;
    ts->datastack_limit = in->datastack_limit;
#endif
#if AWAITLET_PY312
    ts->py_recursion_remaining = ts->py_recursion_limit - in->recursion_depth;
#elif AWAITLET_PY311
    ts->recursion_remaining = ts->recursion_limit - in->recursion_depth;
#else
    ts->recursion_depth = in->recursion_depth;
#endif
#if AWAITLET_PY312 && !AWAITLET_PY314
    ts->c_recursion_remaining = in->c_recursion_remaining;
#endif
#if AWAITLET_PY312 && !AWAITLET_PY313
    ts->trash.delete_nesting = in->trash_delete_nesting;
#elif !AWAITLET_PY313
    ts->trash_delete_nesting = in->trash_delete_nesting;
#endif
#if AWAITLET_PY314
    ts->current_executor = in->current_executor;
    _PyThreadStateImpl *impl = tstate_impl(ts);
    impl->c_stack_top = in->c_stack_top;
    impl->c_stack_soft_limit = in->c_stack_soft_limit;
    impl->c_stack_hard_limit = in->c_stack_hard_limit;
    impl->c_stack_init_base = in->c_stack_init_base;
    impl->c_stack_init_top = in->c_stack_init_top;
#endif
}

#if AWAITLET_CFRAME_TRACING
/* Tracing is per thread (the trace function is not swapped), but 3.10/3.11 cache "tracing
 * is on" in the current cframe: carry it over from the side being left. */
#  define CARRY_TRACING_BEGIN(ts) int carried_use_tracing = (ts)->cframe->use_tracing
#  define CARRY_TRACING_END(ts) ((ts)->cframe->use_tracing = carried_use_tracing)
#else
#  define CARRY_TRACING_BEGIN(ts) ((void)0)
#  define CARRY_TRACING_END(ts) ((void)0)
#endif

/* The state a fiber starts in, built from the resumer's just-saved state. */
static void
init_fiber(awaitlet_fiber_state *s, PyThreadState *ts)
{
    awaitlet_saved *f = &s->fiber;
    const awaitlet_saved *p = &s->parent;
    /* The sync code shares the awaiting task's Context object (unless another one was
     * chosen before the start, as greenlet's gr_context allows). */
    if (s->initial_context != NULL) {
        f->context = s->initial_context;
        s->initial_context = NULL;
    }
    else {
        f->context = Py_XNewRef(p->context);
    }
    memset(&s->exc_root, 0, sizeof(s->exc_root));
    f->exc_info = &s->exc_root;
#if AWAITLET_USE_CFRAME
    memset(&s->base_cframe, 0, sizeof(s->base_cframe));
    s->base_cframe.previous = &ts->root_cframe;
    f->cframe = &s->base_cframe;
#endif
#if AWAITLET_PY311
    /* No current frame: the fiber's first frame has no f_back. */
    f->current_frame = NULL;
    /* A fresh root chunk, with its first slot skipped exactly as CPython's push_chunk
     * does for a thread's root chunk, so that popping the fiber's first frame never tries
     * to free it. */
    _PyStackChunk *chunk = s->root_chunk;
    chunk->previous = NULL;
    chunk->size = AWAITLET_ROOT_CHUNK_SIZE;
    chunk->top = 0;
    f->datastack_chunk = chunk;
    f->datastack_top = &chunk->data[1];
    f->datastack_limit = (PyObject **)((char *)chunk + AWAITLET_ROOT_CHUNK_SIZE);
#else
    f->frame = NULL;
#endif
    /* The fiber starts as deep as its resumer, as a called function would. */
    f->recursion_depth = p->recursion_depth;
#if AWAITLET_PY312 && !AWAITLET_PY314
    f->c_recursion_remaining = s->c_recursion_budget;
#endif
#if !AWAITLET_PY313
    f->trash_delete_nesting = 0;
#endif
#if AWAITLET_PY314
    f->current_executor = p->current_executor;
    /* c_stack_* were filled in by awaitlet_fiber_state_new. */
#endif
}

size_t
awaitlet_root_chunk_size(void)
{
#if AWAITLET_PY311
    return AWAITLET_ROOT_CHUNK_SIZE;
#else
    return 0;
#endif
}

/* Allocates the state of a fiber that will run on the machine stack
 * [stack_low, stack_low + stack_size), with its first frames in `root_chunk`, memory of
 * awaitlet_root_chunk_size() bytes that the caller keeps valid (and does not reuse) until
 * awaitlet_fiber_state_free.  Must be called with the GIL held, on the thread that will run
 * the fiber.  Returns NULL with a Python exception set on failure. */
awaitlet_fiber_state *
awaitlet_fiber_state_new(void *stack_low, size_t stack_size, void *root_chunk)
{
    /* malloc and memset rather than calloc: glibc's calloc skips its per-thread cache, which
     * makes the cost of every fiber's creation depend on the heap's layout. */
    awaitlet_fiber_state *s = PyMem_RawMalloc(sizeof(awaitlet_fiber_state));
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memset(s, 0, sizeof(*s));
#if AWAITLET_PY311
    s->root_chunk = (_PyStackChunk *)root_chunk;
#else
    (void)root_chunk;
#endif
#if AWAITLET_PY312 && !AWAITLET_PY314
    /* The C recursion budget is sized for an 8 MiB thread stack; scale it to the fiber's
     * stack so that deep C recursion raises RecursionError instead of overflowing. */
    {
        const size_t thread_stack = 8u * 1024u * 1024u;
#  if AWAITLET_PY313
        const long limit = Py_C_RECURSION_LIMIT;
#  else
        const long limit = C_RECURSION_LIMIT;
#  endif
        long budget = (long)((double)limit * (double)stack_size / (double)thread_stack);
        s->c_recursion_budget = (int)(budget < limit ? budget : limit);
    }
#endif
#if AWAITLET_PY314
    {
        /* Let CPython compute the soft/hard limits for the fiber's stack, keep them, and
         * put the thread's own back. */
        PyThreadState *ts = current_tstate();
        awaitlet_saved thread_bounds;
        save(&thread_bounds, ts);
        int rc = PyUnstable_ThreadState_SetStackProtection(ts, stack_low, stack_size);
        _PyThreadStateImpl *impl = tstate_impl(ts);
        s->fiber.c_stack_top = impl->c_stack_top;
        s->fiber.c_stack_soft_limit = impl->c_stack_soft_limit;
        s->fiber.c_stack_hard_limit = impl->c_stack_hard_limit;
        s->fiber.c_stack_init_base = impl->c_stack_init_base;
        s->fiber.c_stack_init_top = impl->c_stack_init_top;
        impl->c_stack_top = thread_bounds.c_stack_top;
        impl->c_stack_soft_limit = thread_bounds.c_stack_soft_limit;
        impl->c_stack_hard_limit = thread_bounds.c_stack_hard_limit;
        impl->c_stack_init_base = thread_bounds.c_stack_init_base;
        impl->c_stack_init_top = thread_bounds.c_stack_init_top;
        if (rc < 0) {
            PyMem_RawFree(s);
            return NULL;
        }
    }
#else
    (void)stack_low;
    (void)stack_size;
#endif
    return s;
}

/* Frees a state whose fiber never started or has finished. */
void
awaitlet_fiber_state_free(awaitlet_fiber_state *s)
{
    if (s == NULL) {
        return;
    }
    Py_CLEAR(s->initial_context);
    PyMem_RawFree(s);
}

#if AWAITLET_PY311
/* Gives the data stack chunks from `chunk` down to (not including) `root` back to CPython's
 * arena allocator, which allocated them when frames needed more room than `root` had. */
static void
free_chunks_above_root(_PyStackChunk *chunk, _PyStackChunk *root)
{
    PyObjectArenaAllocator arena;
    PyObject_GetArenaAllocator(&arena);
    while (chunk != NULL && chunk != root) {
        _PyStackChunk *previous = chunk->previous;
        if (arena.free != NULL) {
            arena.free(arena.ctx, chunk, chunk->size);
        }
        chunk = previous;
    }
}
#endif

#if AWAITLET_PY311
static int clear_abandoned_frames(awaitlet_fiber_state *s);
#else
static void release_abandoned_frames(awaitlet_fiber_state *s);
#endif

/* Drops the references held by the saved state of a suspended fiber that will never run
 * again (its thread state is gone): its context and the exception its root was handling, and
 * (3.11+, when every frame is the fiber's own, none a generator's or coroutine's) what its
 * frames reference, as far as it is known (see clear_abandoned_frames).  Returns 1 when
 * nothing outside the fiber can point into its frames any more, after giving the data stack
 * chunks CPython added above the root chunk back to CPython's allocator: the memory of the
 * root chunk (and of the fiber's stack) may then serve another fiber.  Returns 0 when the
 * frames must stay where they are. */
int
awaitlet_fiber_state_release_abandoned(awaitlet_fiber_state *s)
{
    if (!s->started) {
        return 1;
    }
    Py_CLEAR(s->fiber.context);
    Py_CLEAR(s->exc_root.exc_value);
#if !AWAITLET_PY311
    Py_CLEAR(s->exc_root.exc_type);
    Py_CLEAR(s->exc_root.exc_traceback);
#endif
#if AWAITLET_PY311
    for (struct _PyInterpreterFrame *f = s->fiber.current_frame; f != NULL; f = f->previous) {
        int own = f->owner == FRAME_OWNED_BY_THREAD;
#  if AWAITLET_PY314
        /* Entry and other interpreter frames, on the fiber's own machine stack. */
        own = own || f->owner >= FRAME_OWNED_BY_INTERPRETER;
#  elif AWAITLET_PY312
        own = own || f->owner == FRAME_OWNED_BY_CSTACK;
#  endif
        if (!own) {
            return 0;
        }
    }
    if (!clear_abandoned_frames(s)) {
        return 0;
    }
    {
        free_chunks_above_root(s->fiber.datastack_chunk, s->root_chunk);
        s->fiber.datastack_chunk = NULL;
        s->fiber.datastack_top = NULL;
        s->fiber.datastack_limit = NULL;
        s->fiber.current_frame = NULL;
    }
#else
    release_abandoned_frames(s);
#endif
    return 1;
}

static inline int switch_hooks_set(PyThreadState *ts);

static inline void
enter_fiber(awaitlet_fiber_state *s, PyThreadState *ts)
{
    CARRY_TRACING_BEGIN(ts);
    save(&s->parent, ts);
    if (!s->started) {
        s->started = 1;
        init_fiber(s, ts);
    }
    load(&s->fiber, ts);
    CARRY_TRACING_END(ts);
}

/* Called on the resumer's stack right before switching into the fiber.  Returns whether
 * switch hooks are set (awaitlet_switch_hooks_set), for the fiber to know right after the
 * switch without asking. */
int
awaitlet_enter_fiber(awaitlet_fiber_state *s)
{
    PyThreadState *ts = current_tstate();
    enter_fiber(s, ts);
    return switch_hooks_set(ts);
}

/* awaitlet_enter_fiber for a switch's fast path, which has nothing to report: only if the
 * calling thread state's id is `thread_id` and no switch hooks are set (then it returns 1);
 * else it does nothing and returns 0. */
int
awaitlet_enter_fiber_unhooked(awaitlet_fiber_state *s, uint64_t thread_id)
{
    PyThreadState *ts = current_tstate();
    if (ts->id != thread_id || switch_hooks_set(ts)) {
        return 0;
    }
    enter_fiber(s, ts);
    return 1;
}

static inline void
leave_fiber(awaitlet_fiber_state *s, PyThreadState *ts, PyObject *const *call_args_end)
{
#if AWAITLET_PY314
    /* 3.14+ store every frame's stack pointer before a call that can run other code. */
    (void)call_args_end;
#else
    s->call_args_end = call_args_end;
#endif
    CARRY_TRACING_BEGIN(ts);
    save(&s->fiber, ts);
    load(&s->parent, ts);
    CARRY_TRACING_END(ts);
}

/* Called on the fiber's stack right before switching back to the resumer.  `call_args_end`
 * is where the arguments of the call the fiber suspends in end, if that call came from
 * Python code with the vectorcall convention (awaitlet()), else NULL; it is only checked
 * when the collector asks (awaitlet_fiber_traverse).  Returns whether switch hooks are set,
 * for the resumer to know right after the switch without asking. */
int
awaitlet_leave_fiber(awaitlet_fiber_state *s, PyObject *const *call_args_end)
{
    PyThreadState *ts = current_tstate();
    leave_fiber(s, ts, call_args_end);
    return switch_hooks_set(ts);
}

/* awaitlet_leave_fiber for a switch's fast path, which has nothing to report: only if the
 * calling thread state's id is `thread_id` and no switch hooks are set (then it returns 1);
 * else it does nothing and returns 0. */
int
awaitlet_leave_fiber_unhooked(awaitlet_fiber_state *s, PyObject *const *call_args_end,
                              uint64_t thread_id)
{
    PyThreadState *ts = current_tstate();
    if (ts->id != thread_id || switch_hooks_set(ts)) {
        return 0;
    }
    leave_fiber(s, ts, call_args_end);
    return 1;
}

/* Called on the fiber's stack when its function has returned, right before switching back
 * to the resumer for the last time.  Releases what the fiber's thread-state view owns;
 * dropping the context may run Python code, which still runs as the fiber.  Returns whether
 * switch hooks are set, for the resumer to know right after the switch without asking. */
int
awaitlet_finish_fiber(awaitlet_fiber_state *s)
{
    PyThreadState *ts = current_tstate();
    Py_CLEAR(ts->context);
    Py_CLEAR(s->exc_root.exc_value);
#if !AWAITLET_PY311
    Py_CLEAR(s->exc_root.exc_type);
    Py_CLEAR(s->exc_root.exc_traceback);
#endif
#if AWAITLET_PY311
    /* Every frame has returned, so only the root chunk is left: CPython frees the chunks it
     * pushed as their frames pop.  Any chunk still above the root (never expected) was
     * allocated by CPython's arena allocator and goes back to it. */
    free_chunks_above_root(ts->datastack_chunk, s->root_chunk);
#endif
    CARRY_TRACING_BEGIN(ts);
    /* The thread state's context reference was released above; the resumer's comes back. */
    load(&s->parent, ts);
    CARRY_TRACING_END(ts);
    return switch_hooks_set(ts);
}

/* Swaps the running fiber's current context and handled-exception state with those of its
 * resumer (saved in s->parent): code run between two calls behaves, for contextvars and
 * sys.exc_info(), as if the resumer ran it.  Used to run an awaitable's first step without
 * a switch. */
void
awaitlet_swap_resumer_context(awaitlet_fiber_state *s)
{
    PyThreadState *ts = current_tstate();
    PyObject *context = ts->context;
    ts->context = s->parent.context;
    s->parent.context = context;
    _PyErr_StackItem *exc_info = ts->exc_info;
    ts->exc_info = s->parent.exc_info;
    s->parent.exc_info = exc_info;
    ts->context_ver++;
}

/* Swaps the limits of the machine stack in use that CPython checks (the C recursion budget
 * on 3.12 and 3.13, the stack bounds on 3.14+; nothing before) between the running fiber and
 * its resumer (saved in s->parent): for code run between two calls on the resumer's machine
 * stack, below where it waits for the fiber. */
void
awaitlet_swap_resumer_stack_limits(awaitlet_fiber_state *s)
{
#if AWAITLET_PY312 && !AWAITLET_PY314
    PyThreadState *ts = current_tstate();
    int c_recursion_remaining = ts->c_recursion_remaining;
    ts->c_recursion_remaining = s->parent.c_recursion_remaining;
    s->parent.c_recursion_remaining = c_recursion_remaining;
#elif AWAITLET_PY314
    _PyThreadStateImpl *impl = tstate_impl(current_tstate());
#  define AWAITLET_SWAP_FIELD(field)                                                   \
    do {                                                                               \
        uintptr_t value = impl->field;                                                 \
        impl->field = s->parent.field;                                                 \
        s->parent.field = value;                                                       \
    } while (0)
    AWAITLET_SWAP_FIELD(c_stack_top);
    AWAITLET_SWAP_FIELD(c_stack_soft_limit);
    AWAITLET_SWAP_FIELD(c_stack_hard_limit);
    AWAITLET_SWAP_FIELD(c_stack_init_base);
    AWAITLET_SWAP_FIELD(c_stack_init_top);
#  undef AWAITLET_SWAP_FIELD
#else
    (void)s;
#endif
}

/* Returns a new reference to the frame object of a suspended fiber's innermost frame, or
 * None.  CPython only materializes frame objects for the running thread state, so the
 * fiber's frame pointers are lent to the thread state for the call, with the collector off
 * so that no finalizer runs while they are lent. */
PyObject *
awaitlet_fiber_top_frame(awaitlet_fiber_state *s)
{
    if (!s->started) {
        Py_RETURN_NONE;
    }
    PyFrameObject *frame = NULL;
    int gc_was_enabled = PyGC_Disable();
#if AWAITLET_PY313
    PyThreadState *ts = current_tstate();
    struct _PyInterpreterFrame *mine = ts->current_frame;
    ts->current_frame = s->fiber.current_frame;
    frame = PyThreadState_GetFrame(ts);
    ts->current_frame = mine;
#elif AWAITLET_PY311
    PyThreadState *ts = current_tstate();
    struct _PyInterpreterFrame *mine = ts->cframe->current_frame;
    ts->cframe->current_frame = s->fiber.current_frame;
    frame = PyThreadState_GetFrame(ts);
    ts->cframe->current_frame = mine;
#else
    frame = (PyFrameObject *)Py_XNewRef(s->fiber.frame);
#endif
    if (gc_was_enabled) {
        PyGC_Enable();
    }
    if (frame == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return (PyObject *)frame;
}

/* The context a suspended or not yet started fiber runs in (new reference; None when
 * there is none yet). */
PyObject *
awaitlet_fiber_context(awaitlet_fiber_state *s)
{
    PyObject *context = s->started ? s->fiber.context : s->initial_context;
    return Py_NewRef(context != NULL ? context : Py_None);
}

/* Sets the context of a suspended or not yet started fiber; `context` is a Context or None
 * (for a not yet started fiber: run in the resumer's). */
void
awaitlet_fiber_set_context(awaitlet_fiber_state *s, PyObject *context)
{
    PyObject *new_context = context == Py_None ? NULL : Py_NewRef(context);
    PyObject **slot = s->started ? &s->fiber.context : &s->initial_context;
    Py_XSETREF(*slot, new_context);
}

/* Visiting what a fiber owns, for the cycle collector.
 *
 * A suspended fiber's frames are on no thread's frame chain, so nothing else reports the
 * objects they reference: the coroutine (or greenlet) that owns the fiber does, through
 * awaitlet_fiber_traverse, so that a cycle running through them (sync code that keeps its own
 * task in a local) can be found.  The collector's subtract_refs phase takes one off a
 * referent's count per visit, so exactly the strong references the fiber owns are visited,
 * each once: visiting one too few only makes a cycle look reachable, one too many corrupts
 * the collector's counts.
 *
 * Frames owned by the thread are visited as CPython's own frame traverse would visit them,
 * with the value stack up to its top (see traverse_frame for where that is).  Entry and shim
 * frames on the C stack own nothing.  A frame owned by a generator or coroutine running on
 * the fiber is visited by its owner's traverse, except for what that cannot see: while such a
 * frame runs, 3.10-3.13 do not record its stack top either, and their traverse then visits
 * none of its value stack (3.10) or none of its slots at all (3.11-3.13), so those references
 * are reported here, or nothing would report them. */

#if AWAITLET_PY314
/* A _PyStackRef is visited only if it carries a reference count.  NULL and tagged ints are no
 * objects; a reference to an immortal object, or one borrowed from a local variable
 * (LOAD_FAST_BORROW), is not counted in the object's ob_refcnt.  CPython's _PyGC_VisitStackRef
 * skips those in subtract_refs only (it compares the visit function with the collector's,
 * which is not exported); skipping them in every phase is consistent as well: they add nothing
 * to the count subtract_refs starts from, and what a borrowed reference points to is kept
 * alive by the reference it borrows from, which is visited where it is. */
#  define VISIT_STACKREF(ref)                                                   \
    do {                                                                        \
        _PyStackRef visited_ref = (ref);                                        \
        if (!PyStackRef_IsNullOrInt(visited_ref) &&                             \
            PyStackRef_RefcountOnObject(visited_ref)) {                         \
            Py_VISIT(PyStackRef_AsPyObjectBorrow(visited_ref));                 \
        }                                                                       \
    } while (0)
#endif

/* How many slots of the array at `base` (of `item_size`-byte slots) come before `end`, if
 * `end` points to a slot boundary within [base + low, base + high]; otherwise `fallback`.
 * The addresses are compared as integers: `end` may point anywhere. */
static Py_ssize_t
slots_up_to(const void *base, size_t item_size, const void *end, Py_ssize_t low, Py_ssize_t high,
            Py_ssize_t fallback)
{
    uintptr_t from = (uintptr_t)base;
    uintptr_t to = (uintptr_t)end;
    if (end == NULL || to < from + (uintptr_t)low * item_size ||
        to > from + (uintptr_t)high * item_size || (to - from) % item_size != 0) {
        return fallback;
    }
    return (Py_ssize_t)((to - from) / item_size);
}

#if AWAITLET_PY311
/* The code object a frame runs, or NULL. */
static PyCodeObject *
frame_code(struct _PyInterpreterFrame *f)
{
#  if AWAITLET_PY314
    PyObject *executable = PyStackRef_AsPyObjectBorrow(f->f_executable);
#  elif AWAITLET_PY313
    PyObject *executable = f->f_executable;
#  else
    PyObject *executable = (PyObject *)f->f_code;
#  endif
    return executable != NULL && PyCode_Check(executable) ? (PyCodeObject *)executable : NULL;
}

/* How many slots of a suspended frame's local variables and value stack hold references (or
 * NULL): see traverse_frame. */
static Py_ssize_t
frame_slots_in_use(struct _PyInterpreterFrame *f, PyCodeObject *code, const void *call_args_end)
{
    Py_ssize_t locals = code->co_nlocalsplus;
    Py_ssize_t most = locals + code->co_stacksize;
#  if AWAITLET_PY314
    (void)call_args_end;
    return slots_up_to(f->localsplus, sizeof(_PyStackRef), f->stackpointer, locals, most, locals);
#  else
    Py_ssize_t used = f->stacktop >= locals && f->stacktop <= most ? f->stacktop : locals;
    Py_ssize_t in_call = slots_up_to(f->localsplus, sizeof(PyObject *), call_args_end, locals,
                                     most, locals);
    return in_call > used ? in_call : used;
#  endif
}

/* Visits the references of one frame of a suspended fiber that no one else reports.
 *
 * A frame owned by the thread: what CPython's _PyFrame_Traverse visits, with the locals and
 * the value stack up to the frame's stack top.  Where that top is: the evaluation loop of
 * 3.14+ stores the stack pointer of a frame before every call it makes that can run other
 * code ("escaping" calls, in its generated code), so `stackpointer` is valid at the
 * suspension point for every frame of the chain.  3.11-3.13 store it (stacktop) only around calls inlined into the same evaluation
 * loop (Python to Python), and set it to -1 while a frame runs, including while it is in a
 * call of a C function: then only the local variables, which always hold references or NULL,
 * are visited, and for the innermost frame the value stack up to `call_args_end`, the end of
 * the arguments of the call it suspended in (awaitlet()'s), if they lie in its value stack:
 * the evaluation loop passes a call's arguments in place, at the top of the stack, so every
 * slot below their end is in use.
 *
 * A frame owned by a generator on 3.11-3.13, while it runs (stacktop -1): its slots, found
 * the same way; the rest of it is its generator's to visit. */
static int
traverse_frame(struct _PyInterpreterFrame *f, const void *call_args_end, visitproc visit,
               void *arg)
{
    int owned = f->owner == FRAME_OWNED_BY_THREAD;
#  if AWAITLET_PY314
    (void)call_args_end;
    if (!owned) {
        return 0;
    }
#  else
    if (!owned && !(f->owner == FRAME_OWNED_BY_GENERATOR && f->stacktop < 0)) {
        return 0;
    }
#  endif
    if (owned) {
        Py_VISIT(f->frame_obj);
        Py_VISIT(f->f_locals);
#  if AWAITLET_PY314
        VISIT_STACKREF(f->f_funcobj);
        VISIT_STACKREF(f->f_executable);
#  elif AWAITLET_PY313
        Py_VISIT(f->f_funcobj);
        Py_VISIT(f->f_executable);
#  elif AWAITLET_PY312
        Py_VISIT(f->f_funcobj);
        Py_VISIT(f->f_code);
#  else
        Py_VISIT(f->f_func);
        Py_VISIT(f->f_code);
#  endif
    }
    PyCodeObject *code = frame_code(f);
    if (code == NULL) {
        return 0;
    }
    Py_ssize_t used = frame_slots_in_use(f, code, call_args_end);
    for (Py_ssize_t i = 0; i < used; i++) {
#  if AWAITLET_PY314
        VISIT_STACKREF(f->localsplus[i]);
#  else
        Py_VISIT(f->localsplus[i]);
#  endif
    }
    return 0;
}

static int
traverse_frames(awaitlet_fiber_state *s, visitproc visit, void *arg)
{
#  if AWAITLET_PY314
    const void *call_args_end = NULL;
#  else
    const void *call_args_end = s->call_args_end;
#  endif
    for (struct _PyInterpreterFrame *f = s->fiber.current_frame; f != NULL; f = f->previous) {
        int err = traverse_frame(f, f == s->fiber.current_frame ? call_args_end : NULL, visit,
                                 arg);
        if (err) {
            return err;
        }
    }
    return 0;
}

/* Clears what the frames of a fiber that will never run again reference, the frames the
 * thread owns (the caller has checked that no generator's or coroutine's is among them), as
 * CPython clears a frame that returns: first the local variables and the value stack, as far
 * as traverse_frame knows it (on 3.11-3.13 an outer frame's value stack is not known while it
 * calls: it stays referenced), and the locals dict; then each frame object that only its frame
 * references.  A frame object that something else references still points into its frame,
 * whose local variables it now reads as unbound: the frames then keep their functions and
 * code, which such an object still reads.  Otherwise the functions and code are released
 * too.  Returns 1 if no frame object was ever made for these frames: nothing points into them
 * any more.  (A frame object released here may still read its frame when its deallocation is
 * deferred by CPython's trashcan, so its frames' memory is not reused.)  Each slot is emptied
 * before its reference is released, since that may run Python code. */
static int
clear_abandoned_frames(awaitlet_fiber_state *s)
{
#  if AWAITLET_PY314
    const void *call_args_end = NULL;
#  else
    const void *call_args_end = s->call_args_end;
#  endif
    int had_frame_object = 0;
    int shared = 0;
    for (struct _PyInterpreterFrame *f = s->fiber.current_frame; f != NULL; f = f->previous) {
        if (f->owner != FRAME_OWNED_BY_THREAD) {
            continue;
        }
        PyCodeObject *code = frame_code(f);
        if (code != NULL) {
            Py_ssize_t used =
                frame_slots_in_use(f, code, f == s->fiber.current_frame ? call_args_end : NULL);
            while (used > 0) {
                used--;
#  if AWAITLET_PY314
                PyStackRef_CLEAR(f->localsplus[used]);
#  else
                Py_CLEAR(f->localsplus[used]);
#  endif
            }
            /* No slot is in use: a frame object reading the frame's variables must not take
             * an emptied cell slot for a cell (3.11/3.12 do while stacktop is not 0). */
#  if AWAITLET_PY314
            f->stackpointer = f->localsplus;
#  else
            f->stacktop = 0;
#  endif
        }
        Py_CLEAR(f->f_locals);
        if (f->frame_obj != NULL) {
            had_frame_object = 1;
            if (Py_REFCNT(f->frame_obj) == 1) {
                Py_CLEAR(f->frame_obj);
            }
            else {
                shared = 1;
            }
        }
    }
    if (shared) {
        return 0;
    }
    for (struct _PyInterpreterFrame *f = s->fiber.current_frame; f != NULL; f = f->previous) {
        if (f->owner != FRAME_OWNED_BY_THREAD) {
            continue;
        }
#  if AWAITLET_PY314
        PyStackRef_CLEAR(f->f_funcobj);
        PyStackRef_CLEAR(f->f_executable);
#  elif AWAITLET_PY313
        Py_CLEAR(f->f_funcobj);
        Py_CLEAR(f->f_executable);
#  elif AWAITLET_PY312
        Py_CLEAR(f->f_funcobj);
        Py_CLEAR(f->f_code);
#  else
        Py_CLEAR(f->f_func);
        Py_CLEAR(f->f_code);
#  endif
    }
    return !had_frame_object;
}
#else
/* 3.10: frames are PyFrameObjects, linked by strong f_back references.  A frame a function
 * call runs in is not tracked by the collector while it runs: it is referenced by the C
 * function that runs it (here on the fiber's stack) and by its callee's f_back, and frame
 * objects are tracked only once they have returned.  So the fiber owns these frames, and what
 * each one references is visited as frame_traverse would (f_back included: it may be a
 * generator's frame, which is tracked).  A frame already tracked (made with PyFrame_New by
 * some C code) is traversed by the collector itself.  A generator's frame (f_gen) is its
 * generator's, whose traverse visits all of it but the value stack while it runs.  The value
 * stack: f_stackdepth is -1 while a frame runs, so only the innermost frame's is known, up to
 * the end of the arguments of the call it suspended in (see the 3.11+ traverse_frame). */
static int
traverse_frames(awaitlet_fiber_state *s, visitproc visit, void *arg)
{
    for (PyFrameObject *f = s->fiber.frame; f != NULL; f = f->f_back) {
        int owned = f->f_gen == NULL;
        if (owned && PyObject_GC_IsTracked((PyObject *)f)) {
            continue;
        }
        if (owned) {
            Py_VISIT(f->f_back);
            Py_VISIT(f->f_code);
            Py_VISIT(f->f_builtins);
            Py_VISIT(f->f_globals);
            Py_VISIT(f->f_locals);
            Py_VISIT(f->f_trace);
            Py_ssize_t locals = f->f_valuestack - f->f_localsplus;
            for (Py_ssize_t i = 0; i < locals; i++) {
                Py_VISIT(f->f_localsplus[i]);
            }
        }
        Py_ssize_t stack = 0;
        if (owned && f->f_stackdepth > 0 && f->f_stackdepth <= f->f_code->co_stacksize) {
            stack = f->f_stackdepth;
        }
        else if (f->f_stackdepth < 0 && f == s->fiber.frame) {
            stack = slots_up_to(f->f_valuestack, sizeof(PyObject *), s->call_args_end, 0,
                                f->f_code->co_stacksize, 0);
        }
        for (Py_ssize_t i = 0; i < stack; i++) {
            Py_VISIT(f->f_valuestack[i]);
        }
    }
    return 0;
}

/* Releases the frames of a fiber that will never run again, 3.10: each frame a function
 * call runs in (the fiber's own, see traverse_frames) is referenced by the C function that
 * runs it, on the fiber's dead stack: that reference is dropped, so the frame goes (with its
 * local variables) unless something else keeps it, as a traceback may.  First, the innermost
 * frame's value stack as far as it is known (its deallocation does not release the value
 * stack of a frame that runs).  The fiber's first frame has no f_back (init_fiber), so the
 * walk stays within the fiber.  Each frame is read before the reference to it is dropped; the
 * next one is kept alive meanwhile by its own runner's reference, or by its generator. */
static void
release_abandoned_frames(awaitlet_fiber_state *s)
{
    PyFrameObject *f = s->fiber.frame;
    s->fiber.frame = NULL;
    if (f != NULL && f->f_gen == NULL && f->f_stackdepth < 0) {
        Py_ssize_t stack = slots_up_to(f->f_valuestack, sizeof(PyObject *), s->call_args_end, 0,
                                       f->f_code->co_stacksize, 0);
        while (stack > 0) {
            stack--;
            Py_CLEAR(f->f_valuestack[stack]);
        }
    }
    while (f != NULL) {
        PyFrameObject *back = f->f_back;
        if (f->f_gen == NULL && !PyObject_GC_IsTracked((PyObject *)f)) {
            Py_DECREF(f);
        }
        f = back;
    }
}
#endif

/* Visits the references the fiber's state owns: for a fiber that has not started, the context
 * it will start in; for a suspended one, its context, the exception its bottom frame handles
 * and what its frames reference.  Must be called with the GIL held, while the fiber is not
 * running (its frames are then on the thread's own chain, which the collector treats as a
 * root). */
int
awaitlet_fiber_traverse(awaitlet_fiber_state *s, visitproc visit, void *arg)
{
    if (!s->started) {
        Py_VISIT(s->initial_context);
        return 0;
    }
    Py_VISIT(s->fiber.context);
    /* Only the bottom item of the fiber's handled-exception chain is the fiber's: the items
     * above it, if any, belong to generators running on it. */
    Py_VISIT(s->exc_root.exc_value);
#if !AWAITLET_PY311
    Py_VISIT(s->exc_root.exc_type);
    Py_VISIT(s->exc_root.exc_traceback);
#endif
    return traverse_frames(s, visit, arg);
}

/* Whether `object` is a generator marked by types.coroutine (CO_ITERABLE_COROUTINE), which
 * `await` takes as it is: the check of CPython's GET_AWAITABLE, without attribute lookups. */
int
awaitlet_is_iterable_coroutine(PyObject *object)
{
    if (!PyGen_CheckExact(object)) {
        return 0;
    }
#if AWAITLET_PY312
    PyCodeObject *code = PyGen_GetCode((PyGenObject *)object);
    int flags = code->co_flags;
    Py_DECREF(code);
#else
    int flags = ((PyCodeObject *)((PyGenObject *)object)->gi_code)->co_flags;
#endif
    return (flags & CO_ITERABLE_COROUTINE) != 0;
}

/* sys.get_coroutine_origin_tracking_depth() without a call through Python: read each time
 * a coroutine is created. */
int
awaitlet_coroutine_origin_tracking_depth(void)
{
    return PyThreadState_Get()->coroutine_origin_tracking_depth;
}

/* The running code's current context (new reference; None when none was created yet). */
PyObject *
awaitlet_current_context(void)
{
    PyObject *context = current_tstate()->context;
    return Py_NewRef(context != NULL ? context : Py_None);
}

/* Replaces the running code's current context; `context` is a Context or None. */
void
awaitlet_set_current_context(PyObject *context)
{
    PyThreadState *ts = current_tstate();
    PyObject *new_context = context == Py_None ? NULL : Py_NewRef(context);
    ts->context_ver++;
    Py_XSETREF(ts->context, new_context);
}

/* Checks, on the running thread, that the thread-state fields this file uses are where the
 * headers it was compiled against say.  Returns NULL when they are, else a message. */
const char *
awaitlet_check_layout(void)
{
    PyThreadState *ts = current_tstate();
    if (ts == NULL || ts != PyThreadState_Get()) {
        return "no current thread state";
    }
#if AWAITLET_PY311
    if ((Py_Version >> 16) != (PY_VERSION_HEX >> 16)) {
        return "the interpreter's minor version differs from the headers'";
    }
#endif
    if (ts->interp != PyInterpreterState_Get()) {
        return "PyThreadState.interp is not where the headers say";
    }
    if (ts->thread_id != PyThread_get_thread_ident()) {
        return "PyThreadState.thread_id is not where the headers say";
    }
    if (ts->exc_info == NULL) {
        return "PyThreadState.exc_info is not where the headers say";
    }
    if (ts->context != NULL && !PyContext_CheckExact(ts->context)) {
        return "PyThreadState.context is not where the headers say";
    }
    if (python_recursion_depth(ts) < 0 || python_recursion_depth(ts) > Py_GetRecursionLimit() + 100) {
        return "the recursion counters are not where the headers say";
    }
#if AWAITLET_PY311
    if (ts->datastack_top != NULL &&
        !(ts->datastack_top >= ts->datastack_chunk->data && ts->datastack_top <= ts->datastack_limit)) {
        return "PyThreadState.datastack_* are not where the headers say";
    }
#endif
#if AWAITLET_PY312
    /* Read at every switch to know whether a profiler listens (see awaitlet_switch_hooks_set). */
    for (int tool = 0; tool < PY_MONITORING_TOOL_IDS; tool++) {
        PyObject *name = ts->interp->monitoring_tool_names[tool];
        if (name != NULL && !PyUnicode_Check(name)) {
            return "PyInterpreterState's sys.monitoring fields are not where the headers say";
        }
    }
#endif
#if AWAITLET_PY314
    {
        _PyThreadStateImpl *impl = tstate_impl(ts);
        uintptr_t here = (uintptr_t)&impl;
        if (impl->c_stack_top != 0 &&
            !(impl->c_stack_hard_limit < here && here <= impl->c_stack_top)) {
            return "_PyThreadStateImpl.c_stack_* are not where the headers say";
        }
    }
#endif
    return NULL;
}

/* The CPython version the headers describe. */
unsigned long
awaitlet_compiled_python_version(void)
{
    return PY_VERSION_HEX;
}

/* Whether the interpreter has started finalizing: fibers are no longer resumed then. */
int
awaitlet_interpreter_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* Trace and profile hooks across switches.
 *
 * C-level trace and profile functions (PyEval_SetTrace, PyEval_SetProfile: coverage.py's C
 * tracer, cProfile before 3.12) and profilers on sys.monitoring (cProfile since 3.12) keep a
 * shadow stack of the frames they saw called: a "call" event pushes, a "return" pops, and
 * "line" events (or time) are credited to the top.  A fiber's frames leave the thread's frame
 * chain when it suspends and come back when it resumes, without returning or being called, so
 * such a hook would go on crediting the resumer's lines to the sync function (and, after the
 * resume, the sync function's lines to the resumer's frame, or to nothing).  So the switch is
 * reported to them as CPython reports the suspension of a chain of generators awaiting one
 * another: on the way out a "return" event (PY_YIELD) for each of the fiber's frames, innermost
 * first; on the way back a "call" event (PY_RESUME) for each, outermost first.  A profiler also
 * saw the call of the C function the fiber suspends in (awaitlet()), which is on top of its
 * stack: it gets that function's "c_return" (C_RETURN) before the frames' returns, and its
 * "c_call" (CALL) after their calls.
 *
 * Python-level functions (sys.settrace, sys.setprofile) and sys.monitoring tools other than
 * the profiler's get none of this: debuggers follow frames by identity (pdb's "next" stops at
 * the "return" of the frame it steps in, unless its code is a generator's), and a fiber's frame
 * does not return at a switch; coverage.py's sys.monitoring core records lines per code object
 * and needs nothing.  Python-level functions are told apart by the hook's C function: for them
 * it is one of CPython's own trampolines, which are part of the interpreter's image. */

/* Whether `hook` is a function of the interpreter itself (the trampoline of sys.settrace or
 * sys.setprofile) rather than of an extension.  The last answer for each kind of hook is kept:
 * a tracer is set once and called at every switch. */
static int
is_interpreter_hook(Py_tracefunc hook, int profile)
{
    static Py_tracefunc cached_hook[2];
    static int cached_answer[2];
    if (hook == cached_hook[profile]) {
        return cached_answer[profile];
    }
    Dl_info of_hook;
    Dl_info of_interpreter;
    int answer = 0;
    if (dladdr((void *)hook, &of_hook) != 0 &&
        dladdr((void *)&PyEval_SetTrace, &of_interpreter) != 0) {
        answer = of_hook.dli_fbase == of_interpreter.dli_fbase;
    }
    cached_hook[profile] = hook;
    cached_answer[profile] = answer;
    return answer;
}

#if AWAITLET_PY312
/* Whether the profiler's sys.monitoring tool listens to `event` (set with set_events).  The
 * events past the "ungrouped" ones (C_RETURN, C_RAISE) have no entry of their own: CALL turns
 * them on. */
static inline int
profiler_listens(PyThreadState *ts, int event)
{
    int set_by = event < _PY_MONITORING_UNGROUPED_EVENTS ? event : PY_MONITORING_EVENT_CALL;
    return (ts->interp->monitors.tools[set_by] & (1 << PY_MONITORING_PROFILER_ID)) != 0;
}
#endif

/* Whether a trace or profile function, or a profiler on sys.monitoring, is set and not
 * running: the only case in which a switch has anything to report.  Cheap: read at every
 * switch. */
static inline int
switch_hooks_set(PyThreadState *ts)
{
    if (ts->tracing != 0) {
        return 0;
    }
#if AWAITLET_PY312
    if (profiler_listens(ts, PY_MONITORING_EVENT_PY_YIELD)) {
        return 1;
    }
#endif
    return ts->c_tracefunc != NULL || ts->c_profilefunc != NULL;
}

int
awaitlet_switch_hooks_set(void)
{
    return switch_hooks_set(current_tstate());
}

/* Whether any hook set is one a switch is reported to (see above): not when the only ones are
 * Python-level functions, for which nothing is done (not even the frame objects made). */
static int
any_hook_told(PyThreadState *ts)
{
#if AWAITLET_PY312
    if (profiler_listens(ts, PY_MONITORING_EVENT_PY_YIELD)) {
        return 1;
    }
#endif
    return (ts->c_tracefunc != NULL && !is_interpreter_hook(ts->c_tracefunc, 0)) ||
           (ts->c_profilefunc != NULL && !is_interpreter_hook(ts->c_profilefunc, 1));
}

/* The first failure of a series of hook calls, kept while the later calls run, so that every
 * event is still delivered (and the hooks' stacks stay balanced). */
typedef struct {
    int failed;
    PyObject *type;
    PyObject *value;
    PyObject *traceback;
} report_errors;

static void
errors_before_call(report_errors *errors)
{
    if (errors->failed) {
        PyErr_Fetch(&errors->type, &errors->value, &errors->traceback);
    }
}

static void
errors_after_call(report_errors *errors, int result)
{
    if (errors->failed) {
        if (result < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(errors->type, errors->value, errors->traceback);
    }
    else if (result < 0) {
        errors->failed = 1;
    }
}

static void
pause_tracing(PyThreadState *ts)
{
#if AWAITLET_PY311
    PyThreadState_EnterTracing(ts);
#else
    ts->tracing++;
    ts->cframe->use_tracing = 0;
#endif
}

static void
resume_tracing(PyThreadState *ts)
{
#if AWAITLET_PY311
    PyThreadState_LeaveTracing(ts);
#else
    ts->cframe->use_tracing = ts->c_tracefunc != NULL || ts->c_profilefunc != NULL;
    ts->tracing--;
#endif
}

/* Calls the thread's C-level trace (profile = 0) or profile (profile = 1) function, if one is
 * set, with one event, as CPython calls it: with tracing paused so that the hook's own code is
 * not traced. */
static void
call_hook(PyThreadState *ts, int profile, PyFrameObject *frame, int what, PyObject *arg,
          report_errors *errors)
{
    Py_tracefunc hook = profile ? ts->c_profilefunc : ts->c_tracefunc;
    PyObject *hook_object = profile ? ts->c_profileobj : ts->c_traceobj;
    if (hook == NULL || ts->tracing != 0 || is_interpreter_hook(hook, profile)) {
        return;
    }
    errors_before_call(errors);
    /* The hook may replace itself: its object stays alive until it returns. */
    Py_XINCREF(hook_object);
    pause_tracing(ts);
    int result = hook(hook_object, frame, what, arg);
    resume_tracing(ts);
    Py_XDECREF(hook_object);
    errors_after_call(errors, result);
}

#if AWAITLET_PY312
/* Calls the profiler's sys.monitoring callback for `event`, if it listens to it, with the code
 * and instruction offset of `frame` followed by `extra` (count of them, at most 2). */
static void
call_profiler(PyThreadState *ts, int event, PyFrameObject *frame, PyObject *const *extra,
              Py_ssize_t count, report_errors *errors)
{
    if (ts->tracing != 0 || !profiler_listens(ts, event)) {
        return;
    }
    PyObject *callback = ts->interp->monitoring_callables[PY_MONITORING_PROFILER_ID][event];
    if (callback == NULL) {
        return;
    }
    errors_before_call(errors);
    int result = -1;
    PyObject *code = (PyObject *)PyFrame_GetCode(frame);
    PyObject *offset = PyLong_FromLong(PyFrame_GetLasti(frame));
    if (offset != NULL) {
        PyObject *args[4] = {code, offset, NULL, NULL};
        for (Py_ssize_t i = 0; i < count && i < 2; i++) {
            args[2 + i] = extra[i];
        }
        Py_INCREF(callback);
        pause_tracing(ts);
        PyObject *returned = PyObject_Vectorcall(callback, args, 2 + (count < 2 ? count : 2), NULL);
        resume_tracing(ts);
        Py_DECREF(callback);
        /* What it returns (sys.monitoring.DISABLE, say) means nothing for these events. */
        result = returned == NULL ? -1 : 0;
        Py_XDECREF(returned);
        Py_DECREF(offset);
    }
    Py_DECREF(code);
    errors_after_call(errors, result);
}

/* sys.monitoring.MISSING, what a CALL event passes when the call has no argument (borrowed;
 * NULL with an exception set if it cannot be found). */
static PyObject *
monitoring_missing(void)
{
    static PyObject *missing;
    if (missing == NULL) {
        PyObject *sys = PyImport_ImportModule("sys");
        PyObject *monitoring = sys == NULL ? NULL : PyObject_GetAttrString(sys, "monitoring");
        missing = monitoring == NULL ? NULL : PyObject_GetAttrString(monitoring, "MISSING");
        Py_XDECREF(monitoring);
        Py_XDECREF(sys);
    }
    return missing;
}
#endif

/* Reports the "c_call" (what = PyTrace_C_CALL) or "c_return" of `callable`, made by `frame`,
 * to a profiler. */
static void
report_c_event(PyThreadState *ts, PyFrameObject *frame, int what, PyObject *callable,
               report_errors *errors)
{
    call_hook(ts, 1, frame, what, callable, errors);
#if AWAITLET_PY312
    int event = what == PyTrace_C_CALL ? PY_MONITORING_EVENT_CALL : PY_MONITORING_EVENT_C_RETURN;
    if (profiler_listens(ts, event)) {
        errors_before_call(errors);
        PyObject *missing = monitoring_missing();
        errors_after_call(errors, missing == NULL ? -1 : 0);
        if (missing != NULL) {
            PyObject *extra[2] = {callable, missing};
            call_profiler(ts, event, frame, extra, 2, errors);
        }
    }
#endif
}

/* Reports to the hooks that the running fiber suspends (see above); `callable`, if not NULL,
 * is the C function it suspends in, as Python code called it.  Called on the fiber's stack
 * with the GIL held, before awaitlet_leave_fiber (the hooks run Python code).  Returns -1 with
 * an exception set if a hook failed; every event is delivered regardless. */
int
awaitlet_report_suspend(PyObject *callable)
{
    PyThreadState *ts = current_tstate();
    if (!any_hook_told(ts)) {
        return 0;
    }
    report_errors errors = {0, NULL, NULL, NULL};
    PyFrameObject *frame = PyThreadState_GetFrame(ts);
    if (frame == NULL) {
        return 0;
    }
    if (callable != NULL) {
        report_c_event(ts, frame, PyTrace_C_RETURN, callable, &errors);
    }
    while (frame != NULL) {
        call_hook(ts, 0, frame, PyTrace_RETURN, Py_None, &errors);
        call_hook(ts, 1, frame, PyTrace_RETURN, Py_None, &errors);
        PyObject *none = Py_None;
#if AWAITLET_PY312
        call_profiler(ts, PY_MONITORING_EVENT_PY_YIELD, frame, &none, 1, &errors);
#else
        (void)none;
#endif
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    /* Materializing a frame object can fail (out of memory): the walk then stops early. */
    return errors.failed || PyErr_Occurred() ? -1 : 0;
}

/* Reports to the hooks that the running fiber has just been resumed (see above): a "call"
 * event for each of its frames, outermost first, then the "c_call" of `callable` if it is not
 * NULL.  Called on the fiber's stack with the GIL held, after the switch.  Returns -1 with an
 * exception set if a hook failed (or memory ran out); every event is delivered regardless. */
int
awaitlet_report_resume(PyObject *callable)
{
    PyThreadState *ts = current_tstate();
    if (!any_hook_told(ts)) {
        return 0;
    }
    Py_ssize_t count = 0;
    Py_ssize_t allocated = 0;
    PyFrameObject **frames = NULL;
    for (PyFrameObject *frame = PyThreadState_GetFrame(ts); frame != NULL;
         frame = PyFrame_GetBack(frames[count - 1])) {
        if (count == allocated) {
            Py_ssize_t more = allocated == 0 ? 16 : allocated * 2;
            PyFrameObject **grown = PyMem_Realloc(frames, (size_t)more * sizeof(*frames));
            if (grown == NULL) {
                Py_DECREF(frame);
                for (Py_ssize_t i = 0; i < count; i++) {
                    Py_DECREF(frames[i]);
                }
                PyMem_Free(frames);
                PyErr_NoMemory();
                return -1;
            }
            frames = grown;
            allocated = more;
        }
        frames[count++] = frame;
    }
    /* Materializing a frame object can fail (out of memory): the walk then stops early. */
    report_errors errors = {PyErr_Occurred() != NULL, NULL, NULL, NULL};
    for (Py_ssize_t i = count - 1; i >= 0; i--) {
        call_hook(ts, 0, frames[i], PyTrace_CALL, Py_None, &errors);
        call_hook(ts, 1, frames[i], PyTrace_CALL, Py_None, &errors);
#if AWAITLET_PY312
        call_profiler(ts, PY_MONITORING_EVENT_PY_RESUME, frames[i], NULL, 0, &errors);
#endif
    }
    if (callable != NULL && count > 0) {
        report_c_event(ts, frames[0], PyTrace_C_CALL, callable, &errors);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(frames[i]);
    }
    PyMem_Free(frames);
    return errors.failed ? -1 : 0;
}

/* Tells a C-level trace function that the fiber it was told about last is no longer running:
 * called on the resumer's stack when a fiber it resumed suspends or finishes.  A tracer that
 * keeps a shadow stack per greenlet (coverage.py with concurrency=greenlet) looks up the
 * current greenlet only on "call" and "return" events; without one the resumer's next lines
 * would be credited to the fiber's stack until the resumer calls or returns from something.
 * So the resumer's innermost frame is reported as called and returned at once: the stack is
 * left as it was, and the tracer now knows whose it is.  Profilers, which count calls, are not
 * told.  A failing hook is reported as unraisable. */
void
awaitlet_report_switched_back(void)
{
    PyThreadState *ts = current_tstate();
    if (ts->c_tracefunc == NULL || ts->tracing != 0 ||
        is_interpreter_hook(ts->c_tracefunc, 0)) {
        return;
    }
    PyFrameObject *frame = PyThreadState_GetFrame(ts);
    if (frame == NULL) {
        return;
    }
    report_errors errors = {0, NULL, NULL, NULL};
    call_hook(ts, 0, frame, PyTrace_CALL, Py_None, &errors);
    call_hook(ts, 0, frame, PyTrace_RETURN, Py_None, &errors);
    if (errors.failed) {
        PyErr_WriteUnraisable((PyObject *)frame);
    }
    Py_DECREF(frame);
}

/* ---- asyncio's running loop ----
 *
 * Since 3.13 asyncio's C accelerator keeps the thread's running loop in the private
 * _PyThreadStateImpl (a strong reference, NULL when none runs), where _get_running_loop()
 * and _set_running_loop() read and write it.  A first step of awaitlet.decorators.await_()
 * sets it there directly (src/thread_loop/asyncio_state.rs checks once that asyncio agrees). */
#if AWAITLET_PY313
/* The running loop (borrowed), or NULL. */
PyObject *
awaitlet_asyncio_running_loop(void)
{
    return ((_PyThreadStateImpl *)current_tstate())->asyncio_running_loop;
}

/* Sets the running loop (NULL: none), as _set_running_loop() does. */
void
awaitlet_set_asyncio_running_loop(PyObject *loop)
{
    _PyThreadStateImpl *ts = (_PyThreadStateImpl *)current_tstate();
    Py_XSETREF(ts->asyncio_running_loop, Py_XNewRef(loop));
}
#endif

/* ---- attribute lookup without AttributeError ----
 *
 * getattr(obj, name) that reports a missing attribute without making (and dropping) an
 * AttributeError, which costs about a microsecond when the lookup fails on every call:
 * 1 with a new reference in *result, 0 if missing, -1 with an exception set.  3.13 made
 * CPython's private _PyObject_LookupAttr public as PyObject_GetOptionalAttr. */
int
awaitlet_optional_attr(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    return _PyObject_LookupAttr(obj, name, result);
#endif
}
