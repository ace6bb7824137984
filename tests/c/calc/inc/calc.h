/* A small project for the build farm's tests: three units, a header, its own Makefile. */
#ifndef CALC_H
#define CALC_H
#define SQUARE(x) ((x) * (x))
double calc_norm(const double *v, int n);
long calc_fib(int n);
const char *calc_format(double x, char *buf, int len);
#endif
