#include "denoise_fft.h"

#include <math.h>

int denoise_fft_init(denoise_fft *f, int n, denoise_cpx *twiddle)
{
    const double pi = 3.14159265358979323846;
    int m, p, i = 0;

    if (n < 2 || n % 2)
        return -1;
    m = n / 2;
    /* Radix 4 first: fewer, larger stages; then 2, then the odd primes. */
    while (m % 4 == 0 && i < DENOISE_FFT_MAX_FACTORS - 1) {
        f->radix[i++] = 4;
        m /= 4;
    }
    for (p = 2; m > 1 && p <= DENOISE_FFT_MAX_RADIX && i < DENOISE_FFT_MAX_FACTORS - 1;) {
        if (m % p == 0) {
            f->radix[i++] = p;
            m /= p;
        } else {
            p += p == 2 ? 1 : 2;
        }
    }
    if (m > 1)
        return -1;
    f->radix[i] = 0;
    for (i = 0; i < n; i++) {
        twiddle[i].re = (float)cos(2.0 * pi * i / n);
        twiddle[i].im = (float)-sin(2.0 * pi * i / n);
    }
    f->n = n;
    f->twiddle = twiddle;
    return 0;
}

/* DFT of the len values in[0], in[stride], ... into out[0 .. len-1], len * stride = n/2. Each
 * output of a stage of radix p: out[k + q m] = sum_j W^(j (k + q m)) Y_j[k], Y_j the DFT of the j-th
 * decimated sequence and W = exp(-+2 pi i / len) = twiddle[2 stride] (conjugated when inverse). */
static void cfft(const denoise_fft *f, denoise_cpx *out, const denoise_cpx *in, int len, int stride, const int *radix, int inverse)
{
    const int n = f->n, p = radix[0];
    const denoise_cpx *tw = f->twiddle;
    denoise_cpx t[DENOISE_FFT_MAX_RADIX];
    int m, j, k, q;

    if (len == 1) {
        out[0] = in[0];
        return;
    }
    m = len / p;
    for (j = 0; j < p; j++)
        cfft(f, out + j * m, in + j * stride, m, stride * p, radix + 1, inverse);
    for (k = 0; k < m; k++) {
        for (j = 0; j < p; j++)
            t[j] = out[k + j * m];
        for (q = 0; q < p; q++) {
            /* twiddle index of W^(j (k + q m)), stepped by j without a modulo per term */
            const long step = (2L * stride * (k + (long)q * m)) % n;
            long idx = 0;
            float re = 0.0f, im = 0.0f;
            for (j = 0; j < p; j++) {
                const float wr = tw[idx].re, wi = inverse ? -tw[idx].im : tw[idx].im;
                re += t[j].re * wr - t[j].im * wi;
                im += t[j].re * wi + t[j].im * wr;
                idx += step;
                if (idx >= n)
                    idx -= n;
            }
            out[k + q * m].re = re;
            out[k + q * m].im = im;
        }
    }
}

void denoise_rfft(const denoise_fft *f, denoise_cpx *out, const float *in, denoise_cpx *work)
{
    const int m = f->n / 2;
    denoise_cpx *z = work, *y = work + m;
    int k;

    for (k = 0; k < m; k++) {
        z[k].re = in[2 * k];
        z[k].im = in[2 * k + 1];
    }
    cfft(f, y, z, m, 1, f->radix, 0);
    out[0].re = y[0].re + y[0].im;
    out[0].im = 0.0f;
    out[m].re = y[0].re - y[0].im;
    out[m].im = 0.0f;
    for (k = 1; k < m; k++) {
        /* even part E = (Y[k] + conj Y[m-k]) / 2, odd part O = (Y[k] - conj Y[m-k]) / 2i; X = E + W^k O */
        const float sr = y[k].re + y[m - k].re, si = y[k].im - y[m - k].im;
        const float dr = y[k].re - y[m - k].re, di = y[k].im + y[m - k].im;
        const float er = 0.5f * sr, ei = 0.5f * si, or_ = 0.5f * di, oi = -0.5f * dr;
        const float wr = f->twiddle[k].re, wi = f->twiddle[k].im;
        out[k].re = er + wr * or_ - wi * oi;
        out[k].im = ei + wr * oi + wi * or_;
    }
}

void denoise_irfft(const denoise_fft *f, float *out, const denoise_cpx *in, denoise_cpx *work)
{
    const int m = f->n / 2;
    const float scale = 1.0f / (float)f->n;
    denoise_cpx *y = work, *z = work + m;
    int k;

    /* Y[k] = E + i O with E = X[k] + conj X[m-k] and O = (X[k] - conj X[m-k]) W^-k, the DFTs of the
     * even and odd samples (times 2: the 1/2 is folded into the final 1/n). */
    y[0].re = in[0].re + in[m].re;
    y[0].im = in[0].re - in[m].re;
    for (k = 1; k < m; k++) {
        const float er = in[k].re + in[m - k].re, ei = in[k].im - in[m - k].im;
        const float dr = in[k].re - in[m - k].re, di = in[k].im + in[m - k].im;
        const float wr = f->twiddle[k].re, wi = -f->twiddle[k].im;
        const float or_ = dr * wr - di * wi, oi = dr * wi + di * wr;
        y[k].re = er - oi;
        y[k].im = ei + or_;
    }
    cfft(f, z, y, m, 1, f->radix, 1);
    for (k = 0; k < m; k++) {
        out[2 * k] = z[k].re * scale;
        out[2 * k + 1] = z[k].im * scale;
    }
}
