#include "denoise_stft.h"

#include <math.h>
#include <string.h>

#if DENOISE_WIN > DENOISE_N_FFT || DENOISE_WIN % DENOISE_HOP || DENOISE_BINS != DENOISE_N_FFT / 2 + 1
#error "denoise_config.h: the window must fit the FFT, be a multiple of the hop, and bins = n_fft / 2 + 1"
#endif

static double hann(int i)
{
    const double pi = 3.14159265358979323846;

    return 0.5 - 0.5 * cos(2.0 * pi * i / DENOISE_WIN);
}

int denoise_stft_init(denoise_stft *s)
{
    double energy = 0.0, gain;
    int i;

    if (denoise_fft_init(&s->fft, DENOISE_N_FFT, s->twiddle))
        return -1;
    /* Periodic sqrt-Hann, scaled so that overlap-add of its square sums to one (the engine's window). */
    for (i = 0; i < DENOISE_WIN; i++)
        energy += hann(i);
    gain = sqrt(energy / DENOISE_HOP);
    for (i = 0; i < DENOISE_WIN; i++)
        s->window[i] = (float)(sqrt(hann(i)) / gain);
    denoise_stft_reset(s);
    return 0;
}

void denoise_stft_reset(denoise_stft *s)
{
    memset(s->frame, 0, sizeof(s->frame));
    memset(s->ola, 0, sizeof(s->ola));
}

/* Division (not a multiplication by 1/scale) to round as the Python runtime does; rintf rounds half
 * to even in the default rounding mode, as numpy's round does. */
int8_t denoise_quantize(float x, float scale, int zero_point)
{
    float q = rintf(x / scale) + (float)zero_point;

    if (isnan(q)) /* only from an overflowed spectrum; the float-to-int conversion must not see it */
        q = (float)zero_point;
    if (q < -128.0f)
        q = -128.0f;
    if (q > 127.0f)
        q = 127.0f;
    return (int8_t)q;
}

float denoise_dequantize(int8_t q, float scale, int zero_point)
{
    return ((float)q - (float)zero_point) * scale;
}

void denoise_stft_analyse(denoise_stft *s, const float *in)
{
    const int head = DENOISE_WIN - DENOISE_HOP;
    int i;

    memmove(s->frame, s->frame + DENOISE_HOP, (size_t)head * sizeof(float));
    for (i = 0; i < DENOISE_HOP; i++)
        s->frame[head + i] = isfinite(in[i]) ? in[i] : 0.0f;
    for (i = 0; i < DENOISE_WIN; i++)
        s->buf[i] = s->frame[i] * s->window[i];
    for (; i < DENOISE_N_FFT; i++)
        s->buf[i] = 0.0f;
    denoise_rfft(&s->fft, s->spec, s->buf, s->work);
}

void denoise_stft_features(const denoise_stft *s, int8_t *features, float scale, int zero_point)
{
    const int F = DENOISE_BINS;
    int k;

    /* transforms.features: m = sqrt(max(re^2 + im^2, 1e-12)); c = m^power; [c, re*c/m, im*c/m] */
    for (k = 0; k < F; k++) {
        const float re = s->spec[k].re, im = s->spec[k].im;
        const float mag = sqrtf(fmaxf(re * re + im * im, 1e-12f));
        const float c = powf(mag, DENOISE_FEATURE_POWER), g = c / mag;
        features[k] = denoise_quantize(c, scale, zero_point);
        features[F + k] = denoise_quantize(re * g, scale, zero_point);
        features[2 * F + k] = denoise_quantize(im * g, scale, zero_point);
    }
}

void denoise_stft_mask(denoise_stft *s, int k, float zr, float zi)
{
    /* transforms.mask_bound: r = sqrt(max(|z|^2, 1e-12)); mask = z tanh(r) / r; then X * mask */
    const float r = sqrtf(fmaxf(zr * zr + zi * zi, 1e-12f)), g = tanhf(r) / r;
    const float mr = zr * g, mi = zi * g, xr = s->spec[k].re, xi = s->spec[k].im;

    s->spec[k].re = xr * mr - xi * mi;
    s->spec[k].im = xr * mi + xi * mr;
}

void denoise_stft_synthesise(denoise_stft *s, float *out)
{
    const int head = DENOISE_WIN - DENOISE_HOP;
    int i;

    denoise_irfft(&s->fft, s->buf, s->spec, s->work);
    for (i = 0; i < DENOISE_WIN; i++)
        s->ola[i] += s->buf[i] * s->window[i];
    for (i = 0; i < DENOISE_HOP; i++)
        out[i] = s->ola[i];
    memmove(s->ola, s->ola + DENOISE_HOP, (size_t)head * sizeof(float));
    memset(s->ola + head, 0, DENOISE_HOP * sizeof(float));
}
