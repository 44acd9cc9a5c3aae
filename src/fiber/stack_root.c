/*
 * The bottom frame of every fiber stack, as the unwinder sees it.
 *
 * A fiber makes its Python call through awaitlet_call_at_stack_root(), whose unwind
 * information says that it has no caller (its return address is "undefined", as for a
 * thread's first frame).  Nothing changes when the call returns normally; what changes is
 * what an unwinder walking up from Python's frames finds: the end of the stack.
 *
 * That matters for one unwind: on CPython 3.10-3.13, a thread that tries to take the GIL back
 * while the interpreter is finalizing is ended by pthread_exit(), whose forced unwind walks
 * the thread's stack up to the thread's start and runs cleanups on the way.  On a fiber,
 * that walk would continue into the Rust frames of the fiber machinery and of its resumer,
 * whose panic boundaries cannot let a foreign unwind pass (glibc then aborts: "exception not
 * rethrown").  Ending the stack here makes glibc finish the thread exactly as it does for a
 * plain thread: it jumps back to the thread's start routine, abandoning the fiber's frames
 * the way it abandons C frames.
 */
#include <Python.h>

#if defined(_WIN32)
#  error "awaitlet-rs does not support Windows yet: its fiber stacks need mmap and mprotect (Linux and macOS are supported)"
#endif

/* The call, as src/fiber/mod.rs (RootCall) lays it out. */
struct awaitlet_root_call {
    PyObject *callable;
    PyObject *args;   /* PyObject_Call's tuple, when vector is NULL */
    PyObject *kwargs; /* and its dict, or NULL */
    PyObject *const *vector; /* else PyObject_Vectorcall's arguments */
    size_t nargsf;
    PyObject *kwnames;
};

PyObject *awaitlet_call_at_stack_root(const struct awaitlet_root_call *call);
__attribute__((visibility("hidden"))) PyObject *
awaitlet_make_root_call(const struct awaitlet_root_call *call);

/* Makes the call; called only by the frame below. */
PyObject *
awaitlet_make_root_call(const struct awaitlet_root_call *call)
{
    if (call->vector != NULL) {
        return PyObject_Vectorcall(call->callable, call->vector, call->nargsf, call->kwnames);
    }
    return PyObject_Call(call->callable, call->args, call->kwargs);
}

/* The function and instance of a bound method object (borrowed), or NULLs for any other
 * callable: pyo3's FFI has no binding for PyMethod_GET_FUNCTION and PyMethod_GET_SELF. */
void
awaitlet_bound_method_parts(PyObject *callable, PyObject **function, PyObject **self)
{
    if (PyMethod_Check(callable)) {
        *function = PyMethod_GET_FUNCTION(callable);
        *self = PyMethod_GET_SELF(callable);
    }
    else {
        *function = NULL;
        *self = NULL;
    }
}

#if defined(__linux__) && defined(__x86_64__)

/* The argument arrives in awaitlet_make_root_call's register already; re-align the stack and
 * call it. */
__asm__(
    ".text\n"
    ".globl awaitlet_call_at_stack_root\n"
    ".hidden awaitlet_call_at_stack_root\n"
    ".type awaitlet_call_at_stack_root, @function\n"
    ".p2align 4\n"
    "awaitlet_call_at_stack_root:\n"
    "    .cfi_startproc\n"
    "    .cfi_undefined rip\n"
    "    subq $8, %rsp\n"
    "    .cfi_adjust_cfa_offset 8\n"
    "    call awaitlet_make_root_call\n"
    "    addq $8, %rsp\n"
    "    .cfi_adjust_cfa_offset -8\n"
    "    ret\n"
    "    .cfi_endproc\n"
    ".size awaitlet_call_at_stack_root, .-awaitlet_call_at_stack_root\n");

#elif defined(__linux__) && defined(__aarch64__)

__asm__(
    ".text\n"
    ".globl awaitlet_call_at_stack_root\n"
    ".hidden awaitlet_call_at_stack_root\n"
    ".type awaitlet_call_at_stack_root, %function\n"
    ".p2align 2\n"
    "awaitlet_call_at_stack_root:\n"
    "    .cfi_startproc\n"
    "    .cfi_undefined x30\n"
    "    stp x29, x30, [sp, #-16]!\n"
    "    .cfi_adjust_cfa_offset 16\n"
    "    mov x29, sp\n"
    "    bl awaitlet_make_root_call\n"
    "    ldp x29, x30, [sp], #16\n"
    "    .cfi_adjust_cfa_offset -16\n"
    "    ret\n"
    "    .cfi_endproc\n"
    ".size awaitlet_call_at_stack_root, .-awaitlet_call_at_stack_root\n");

#else

/* Elsewhere no thread is ended by a forced unwind through Python code: a plain call. */
PyObject *
awaitlet_call_at_stack_root(const struct awaitlet_root_call *call)
{
    return awaitlet_make_root_call(call);
}

#endif
