// A vector add: c[i] = a[i] + b[i]. `extern "C"` keeps the kernel's name unmangled, so a
// cuda task can name it as its entry.
extern "C" __global__ void add(const float *a, const float *b, float *c, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        c[i] = a[i] + b[i];
    }
}
