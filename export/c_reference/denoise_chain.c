#include "denoise_chain.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "denoise_stft.h"

#if DENOISE_STAGE_STUDENT != 0 || DENOISE_STAGE_CORRECTOR != 1 || DENOISE_NUM_STAGES != 2
#error "denoise_config.h: the stages are called student, then corrector"
#endif

const denoise_chain_tensor denoise_chain_tensors[DENOISE_NUM_TENSORS] = {DENOISE_TENSOR_LAYOUT};
const denoise_chain_stage denoise_chain_stages[DENOISE_NUM_STAGES] = {DENOISE_STAGE_LAYOUT};
const denoise_chain_state_slot denoise_chain_state_layout[DENOISE_NUM_STATES] = {DENOISE_STATE_LAYOUT};

struct denoise_chain_state {
    denoise_chain_invoke_fn invoke;
    void *ctx;
    denoise_stft stft;
    denoise_cpx frame[DENOISE_BINS]; /* the frame's spectrum: stft.spec becomes the estimate */
    int8_t states[2][DENOISE_STATES_LEN]; /* the current one holds the states at the start of the frame */
    int8_t work[DENOISE_WORK_LEN];
    int current;
    uint64_t t; /* the frame's index in the stream, where eps is drawn */
};

size_t denoise_chain_size(void)
{
    return sizeof(denoise_chain_state);
}

denoise_chain_state *denoise_chain_init(void *memory, denoise_chain_invoke_fn invoke, void *ctx)
{
    denoise_chain_state *st = (denoise_chain_state *)memory;

    if (!memory || !invoke)
        return NULL;
    memset(st, 0, sizeof(*st));
    st->invoke = invoke;
    st->ctx = ctx;
    if (denoise_stft_init(&st->stft))
        return NULL;
    denoise_chain_reset(st);
    return st;
}

denoise_chain_state *denoise_chain_create(denoise_chain_invoke_fn invoke, void *ctx)
{
    void *memory;
    denoise_chain_state *st;

    if (!invoke)
        return NULL;
    memory = malloc(sizeof(denoise_chain_state));
    st = denoise_chain_init(memory, invoke, ctx);
    if (!st)
        free(memory);
    return st;
}

/* The states and eps as at the start of a stream. */
static void restart(denoise_chain_state *st)
{
    int i;

    st->current = 0;
    st->t = 0;
    for (i = 0; i < DENOISE_NUM_STATES; i++)
        memset(st->states[0] + denoise_chain_state_layout[i].offset, denoise_chain_state_layout[i].init, (size_t)denoise_chain_state_layout[i].size);
}

void denoise_chain_reset(denoise_chain_state *st)
{
    denoise_stft_reset(&st->stft);
    restart(st);
}

void denoise_chain_destroy(denoise_chain_state *st)
{
    free(st);
}

/* SplitMix64's output function; the words are mix(seed + (k + 1) * GAMMA), k = 0, 1, ... */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void denoise_chain_eps(uint64_t seed, uint64_t frame, float *eps)
{
    const uint64_t gamma = UINT64_C(0x9E3779B97F4A7C15);
    const double pi = 3.14159265358979323846, step = 1.0 / 9007199254740992.0; /* 2^-53 */
    uint64_t s = seed + 2 * DENOISE_BINS * frame * gamma; /* before word 2 * frame * bins, modulo 2^64 */
    int f;

    for (f = 0; f < DENOISE_BINS; f++) {
        const uint64_t a = mix(s += gamma), b = mix(s += gamma);
        const double u1 = ((double)(a >> 11) + 1.0) * step, u2 = (double)(b >> 11) * step; /* (0, 1] and [0, 1) */
        const double r = sqrt(-2.0 * log(u1));
        eps[f] = (float)(r * cos(2.0 * pi * u2));
        eps[DENOISE_BINS + f] = (float)(r * sin(2.0 * pi * u2));
    }
}

static int8_t *kept(denoise_chain_state *st, int where, int offset)
{
    if (where == DENOISE_CHAIN_STATES_IN)
        return st->states[st->current] + offset;
    if (where == DENOISE_CHAIN_STATES_OUT)
        return st->states[1 - st->current] + offset;
    return st->work + offset;
}

/* transforms.flow of a spectrum, quantised as [1, 2, 1, bins]: Y m^(power - 1), m = sqrt(max(|Y|^2, 1e-12)). */
static void flow(int8_t *q, const denoise_cpx *y, const denoise_chain_tensor *t)
{
    int k;

    for (k = 0; k < DENOISE_BINS; k++) {
        const float g = powf(sqrtf(fmaxf(y[k].re * y[k].re + y[k].im * y[k].im, 1e-12f)), DENOISE_FLOW_EXPONENT);
        q[k] = denoise_quantize(y[k].re * g, t->scale, t->zero_point);
        q[DENOISE_BINS + k] = denoise_quantize(y[k].im * g, t->scale, t->zero_point);
    }
}

/* Fills the stage's inputs as their tensors say, then runs it. */
static int run(denoise_chain_state *st, int stage)
{
    const denoise_chain_stage *p = &denoise_chain_stages[stage];
    const int8_t *in[DENOISE_MAX_IO];
    int8_t *out[DENOISE_MAX_IO];
    float eps[2 * DENOISE_BINS];
    int i, j;

    for (i = 0; i < p->num_inputs; i++) {
        const denoise_chain_tensor *t = &denoise_chain_tensors[p->inputs + i];
        int8_t *q = kept(st, t->kept, t->offset);
        if (t->fill == DENOISE_CHAIN_FILL_FEATURES) {
            denoise_stft_features(&st->stft, q, t->scale, t->zero_point);
        } else if (t->fill == DENOISE_CHAIN_FILL_ESTIMATE) {
            flow(q, st->stft.spec, t);
        } else if (t->fill == DENOISE_CHAIN_FILL_NOISY) {
            flow(q, st->frame, t);
        } else if (t->fill == DENOISE_CHAIN_FILL_EPS) {
            if (DENOISE_EPS_SEEDED)
                denoise_chain_eps(DENOISE_EPS_SEED, st->t, eps);
            else
                memset(eps, 0, sizeof eps);
            for (j = 0; j < t->size; j++)
                q[j] = denoise_quantize(eps[j], t->scale, t->zero_point);
        }
        in[i] = q;
    }
    for (i = 0; i < p->num_outputs; i++) {
        const denoise_chain_tensor *t = &denoise_chain_tensors[p->outputs + i];
        out[i] = kept(st, t->kept, t->offset);
    }
    return st->invoke(st->ctx, stage, in, out);
}

/* The student's dequantised z, its mask bound applied to the spectrum: the estimate. */
static void estimate(denoise_chain_state *st)
{
    const denoise_chain_tensor *z = &denoise_chain_tensors[DENOISE_Z];
    const int8_t *q = kept(st, z->kept, z->offset);
    int k;

    for (k = 0; k < DENOISE_BINS; k++)
        denoise_stft_mask(&st->stft, k, denoise_dequantize(q[k], z->scale, z->zero_point),
                          denoise_dequantize(q[DENOISE_BINS + k], z->scale, z->zero_point));
}

/* The corrector's dequantised output taken back by unflow, C m^(1/power - 1) with m = |C|: the
 * enhanced spectrum. */
static void enhanced(denoise_chain_state *st)
{
    const denoise_chain_tensor *c = &denoise_chain_tensors[DENOISE_CORRECTED];
    const int8_t *q = kept(st, c->kept, c->offset);
    int k;

    for (k = 0; k < DENOISE_BINS; k++) {
        const float re = denoise_dequantize(q[k], c->scale, c->zero_point), im = denoise_dequantize(q[DENOISE_BINS + k], c->scale, c->zero_point);
        const float g = powf(sqrtf(fmaxf(re * re + im * im, 1e-12f)), DENOISE_UNFLOW_EXPONENT);
        st->stft.spec[k].re = re * g;
        st->stft.spec[k].im = im * g;
    }
}

int denoise_chain_process_frame(denoise_chain_state *st, float *out, const float *in)
{
    int rc;

    denoise_stft_analyse(&st->stft, in);
    memcpy(st->frame, st->stft.spec, sizeof(st->frame));
    rc = run(st, DENOISE_STAGE_STUDENT);
    if (!rc) {
        estimate(st);
        rc = run(st, DENOISE_STAGE_CORRECTOR);
    }
    if (rc) {
        memcpy(st->stft.spec, st->frame, sizeof(st->frame));
        restart(st);
    } else {
        enhanced(st);
        st->current = 1 - st->current;
        st->t++;
    }
    denoise_stft_synthesise(&st->stft, out);
    return rc;
}
