/* Real FFT of any even length whose half has prime factors up to DENOISE_FFT_MAX_RADIX (320 = 2 * 2^5 * 5).
 *
 * Mixed-radix decimation in time on the half-length complex sequence x[2k] + i x[2k+1], then split
 * into the spectrum of the real signal. Twiddles are computed once, in double precision. Written for
 * correctness and plain C99, not speed: the butterflies are generic (radix p costs p complex
 * multiply-adds per output), so n = 320 costs n/2 * (4 + 4 + 2 + 5) = 2400 complex multiply-adds plus
 * n/4 for the split, per direction. */
#ifndef DENOISE_FFT_H
#define DENOISE_FFT_H

#ifdef __cplusplus
extern "C" { /* TFLM firmware is C++ */
#endif

#define DENOISE_FFT_MAX_RADIX 16
#define DENOISE_FFT_MAX_FACTORS 32

typedef struct {
    float re, im;
} denoise_cpx;

typedef struct {
    int n;                                 /* real length, even */
    int radix[DENOISE_FFT_MAX_FACTORS];    /* factors of n/2, ending with 0 */
    const denoise_cpx *twiddle;            /* n values: exp(-2 pi i k / n) */
} denoise_fft;

/* Prepares a transform of length n; twiddle: caller's storage for n values. Returns 0, or -1 when n
 * is odd, below 2, or n/2 has a prime factor above DENOISE_FFT_MAX_RADIX. */
int denoise_fft_init(denoise_fft *f, int n, denoise_cpx *twiddle);

/* out[k] = sum_t in[t] exp(-2 pi i k t / n), k = 0 .. n/2 (numpy.fft.rfft).
 * in: n floats; out: n/2 + 1 values; work: n values of scratch. */
void denoise_rfft(const denoise_fft *f, denoise_cpx *out, const float *in, denoise_cpx *work);

/* The inverse (numpy.fft.irfft with its 1/n): n real samples from n/2 + 1 bins of a Hermitian
 * spectrum; the imaginary parts of bins 0 and n/2 are ignored. work: n values of scratch. */
void denoise_irfft(const denoise_fft *f, float *out, const denoise_cpx *in, denoise_cpx *work);

#ifdef __cplusplus
}
#endif

#endif /* DENOISE_FFT_H */
