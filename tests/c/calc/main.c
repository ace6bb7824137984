#include <stdio.h>
#include "calc.h"

int main(void)
{
    double v[] = {3, 4, 12};
    char buf[32];
    printf("norm %s fib %ld\n", calc_format(calc_norm(v, 3), buf, sizeof buf), calc_fib(50));
    return 0;
}
