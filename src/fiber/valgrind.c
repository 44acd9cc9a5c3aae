/* Valgrind client requests for fiber stacks; compiled only with the `valgrind` feature.
 * Outside valgrind each request is a few no-op instructions. */
#include <valgrind/valgrind.h>

unsigned int awaitlet_valgrind_stack_register(void *low, void *high)
{
    return VALGRIND_STACK_REGISTER(low, high);
}

void awaitlet_valgrind_stack_deregister(unsigned int id)
{
    VALGRIND_STACK_DEREGISTER(id);
}
