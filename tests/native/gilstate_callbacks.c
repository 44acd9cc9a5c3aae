/*
 * Test helper: calls a Python callback from a native thread the interpreter did not start,
 * the way C libraries with their own threads do: PyGILState_Ensure / PyGILState_Release
 * around every call, so that each call runs under a new PyThreadState on the same OS thread.
 *
 * Loaded with ctypes.CDLL, which releases the GIL while run_callbacks waits for the thread.
 */
#include <Python.h>
#include <pthread.h>

struct job {
    PyObject *callback;
    int count;
    int failures;
};

static void *
run(void *arg)
{
    struct job *job = arg;
    for (int i = 0; i < job->count; i++) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *result = PyObject_CallFunction(job->callback, "i", i);
        if (result == NULL) {
            PyErr_Print();
            job->failures++;
        }
        Py_XDECREF(result);
        PyGILState_Release(gil);
    }
    return NULL;
}

/* Calls callback(0), callback(1), ... callback(count - 1) on one new native thread, each
 * under its own thread state; returns how many calls raised (printed), or -1. */
int
run_callbacks(PyObject *callback, int count)
{
    struct job job = {callback, count, 0};
    pthread_t thread;
    if (pthread_create(&thread, NULL, run, &job) != 0) {
        return -1;
    }
    if (pthread_join(thread, NULL) != 0) {
        return -1;
    }
    return job.failures;
}
