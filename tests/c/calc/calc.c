#include <math.h>
#include "calc.h"

double calc_norm(const double *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += SQUARE(v[i]);
    return sqrt(s);
}

long calc_fib(int n)
{
    long a = 0, b = 1;
    while (n-- > 0) {
        long t = a + b;
        a = b;
        b = t;
    }
    return a;
}
