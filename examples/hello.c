/* Compiled and run on a vgas worker by scripts/demo.sh. */
#include <stdio.h>

static unsigned long long fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

int main(void) {
    printf("hello from a vgas worker: fib(30) = %llu\n", fib(30));
    return 0;
}
