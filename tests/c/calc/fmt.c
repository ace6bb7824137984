#include <stdio.h>
#include "calc.h"

const char *calc_format(double x, char *buf, int len)
{
    snprintf(buf, (size_t)len, "%.3f", x);
    return buf;
}
