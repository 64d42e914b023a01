#include "denoise.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "denoise_fft.h"

#if DENOISE_WIN > DENOISE_N_FFT || DENOISE_WIN % DENOISE_HOP || DENOISE_BINS != DENOISE_N_FFT / 2 + 1
#error "denoise_config.h: the window must fit the FFT, be a multiple of the hop, and bins = n_fft / 2 + 1"
#endif

const denoise_state_slot denoise_state_layout[DENOISE_NUM_STATES] = {DENOISE_STATE_LAYOUT};

struct denoise_state {
    denoise_invoke_fn invoke;
    void *ctx;
    denoise_fft fft;
    denoise_cpx twiddle[DENOISE_N_FFT];
    denoise_cpx work[DENOISE_N_FFT];
    denoise_cpx spec[DENOISE_BINS];
    float window[DENOISE_WIN];
    float frame[DENOISE_WIN]; /* the last DENOISE_WIN input samples */
    float ola[DENOISE_WIN];   /* overlap-add of the frames' output; its first hop is complete */
    float buf[DENOISE_N_FFT];
    int8_t features[DENOISE_FEATURES_LEN];
    int8_t z[DENOISE_Z_LEN];
    int8_t states[2][DENOISE_STATES_LEN]; /* the current one is the next frame's states_in */
    int current;
};

size_t denoise_size(void)
{
    return sizeof(denoise_state);
}

static double hann(int i)
{
    const double pi = 3.14159265358979323846;

    return 0.5 - 0.5 * cos(2.0 * pi * i / DENOISE_WIN);
}

denoise_state *denoise_init(void *memory, denoise_invoke_fn invoke, void *ctx)
{
    denoise_state *st = (denoise_state *)memory;
    double energy = 0.0, gain;
    int i;

    if (!memory || !invoke)
        return NULL;
    memset(st, 0, sizeof(*st));
    st->invoke = invoke;
    st->ctx = ctx;
    if (denoise_fft_init(&st->fft, DENOISE_N_FFT, st->twiddle))
        return NULL;
    /* Periodic sqrt-Hann, scaled so that overlap-add of its square sums to one (the engine's window). */
    for (i = 0; i < DENOISE_WIN; i++)
        energy += hann(i);
    gain = sqrt(energy / DENOISE_HOP);
    for (i = 0; i < DENOISE_WIN; i++)
        st->window[i] = (float)(sqrt(hann(i)) / gain);
    denoise_reset(st);
    return st;
}

denoise_state *denoise_create(denoise_invoke_fn invoke, void *ctx)
{
    void *memory;
    denoise_state *st;

    if (!invoke)
        return NULL;
    memory = malloc(sizeof(denoise_state));
    st = denoise_init(memory, invoke, ctx);
    if (!st)
        free(memory);
    return st;
}

static void reset_states(denoise_state *st)
{
    int i;

    st->current = 0;
    for (i = 0; i < DENOISE_NUM_STATES; i++)
        memset(st->states[0] + denoise_state_layout[i].offset, denoise_state_layout[i].init, (size_t)denoise_state_layout[i].size);
}

void denoise_reset(denoise_state *st)
{
    memset(st->frame, 0, sizeof(st->frame));
    memset(st->ola, 0, sizeof(st->ola));
    reset_states(st);
}

void denoise_destroy(denoise_state *st)
{
    free(st);
}

/* round(x / scale) + zero_point, half to even, saturated: numpy's round under the default rounding
 * mode, division (not a multiplication by 1/scale) to round as the Python runtime does. */
static int8_t quantize(float x, float scale, int zero_point)
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

static float dequantize(int8_t q, float scale, int zero_point)
{
    return ((float)q - (float)zero_point) * scale;
}

int denoise_process_frame(denoise_state *st, float *out, const float *in)
{
    const int head = DENOISE_WIN - DENOISE_HOP, F = DENOISE_BINS;
    int8_t *states_in = st->states[st->current], *states_out = st->states[1 - st->current];
    int i, k, rc;

    for (i = 0; i < DENOISE_HOP; i++)
        st->frame[head + i] = isfinite(in[i]) ? in[i] : 0.0f;
    for (i = 0; i < DENOISE_WIN; i++)
        st->buf[i] = st->frame[i] * st->window[i];
    for (; i < DENOISE_N_FFT; i++)
        st->buf[i] = 0.0f;
    denoise_rfft(&st->fft, st->spec, st->buf, st->work);

    /* transforms.features: m = sqrt(max(re^2 + im^2, 1e-12)); c = m^power; [c, re*c/m, im*c/m] */
    for (k = 0; k < F; k++) {
        const float re = st->spec[k].re, im = st->spec[k].im;
        const float mag = sqrtf(fmaxf(re * re + im * im, 1e-12f));
        const float c = powf(mag, DENOISE_FEATURE_POWER), g = c / mag;
        st->features[k] = quantize(c, DENOISE_FEATURES_SCALE, DENOISE_FEATURES_ZERO_POINT);
        st->features[F + k] = quantize(re * g, DENOISE_FEATURES_SCALE, DENOISE_FEATURES_ZERO_POINT);
        st->features[2 * F + k] = quantize(im * g, DENOISE_FEATURES_SCALE, DENOISE_FEATURES_ZERO_POINT);
    }

    rc = st->invoke(st->ctx, st->features, states_in, st->z, states_out);
    if (rc) {
        reset_states(st);
    } else {
        st->current = 1 - st->current;
        /* transforms.mask_bound: r = sqrt(max(|z|^2, 1e-12)); mask = z tanh(r) / r; then X * mask */
        for (k = 0; k < F; k++) {
            const float zr = dequantize(st->z[k], DENOISE_Z_SCALE, DENOISE_Z_ZERO_POINT);
            const float zi = dequantize(st->z[F + k], DENOISE_Z_SCALE, DENOISE_Z_ZERO_POINT);
            const float r = sqrtf(fmaxf(zr * zr + zi * zi, 1e-12f)), s = tanhf(r) / r;
            const float mr = zr * s, mi = zi * s, xr = st->spec[k].re, xi = st->spec[k].im;
            st->spec[k].re = xr * mr - xi * mi;
            st->spec[k].im = xr * mi + xi * mr;
        }
    }
    denoise_irfft(&st->fft, st->buf, st->spec, st->work);

    for (i = 0; i < DENOISE_WIN; i++)
        st->ola[i] += st->buf[i] * st->window[i];
    for (i = 0; i < DENOISE_HOP; i++)
        out[i] = st->ola[i];
    memmove(st->ola, st->ola + DENOISE_HOP, (size_t)head * sizeof(float));
    memset(st->ola + head, 0, DENOISE_HOP * sizeof(float));
    memmove(st->frame, st->frame + DENOISE_HOP, (size_t)head * sizeof(float));
    return rc;
}
