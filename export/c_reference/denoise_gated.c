#include "denoise_gated.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "denoise_stft.h"

#if DENOISE_PART_TRUNK != 0 || DENOISE_PART_BRANCH0 < 1 || DENOISE_NUM_PARTS != DENOISE_PART_BRANCH0 + DENOISE_NUM_BRANCHES
#error "denoise_config.h: the parts are called trunk first, the others before DENOISE_PART_BRANCH0 next, then the branches"
#endif
#if DENOISE_ENERGY_BANDS * DENOISE_ENERGY_WIDTH > DENOISE_BINS
#error "denoise_config.h: the energy bands must lie within the bins"
#endif

const denoise_gated_tensor denoise_gated_tensors[DENOISE_NUM_TENSORS] = {DENOISE_TENSOR_LAYOUT};
const denoise_gated_part denoise_gated_parts[DENOISE_NUM_PARTS] = {DENOISE_PART_LAYOUT};
const denoise_gated_state_slot denoise_gated_state_layout[DENOISE_NUM_STATES] = {DENOISE_STATE_LAYOUT};

struct denoise_gated_state {
    denoise_gated_invoke_fn invoke;
    void *ctx;
    denoise_stft stft;
    int8_t states[2][DENOISE_STATES_LEN]; /* the current one holds the states at the start of the frame */
    int8_t work[DENOISE_WORK_LEN]; /* outputs that are not states, then the current call's filled inputs */
    int current;
    int ran[DENOISE_NUM_BRANCHES];
};

size_t denoise_gated_size(void)
{
    return sizeof(denoise_gated_state);
}

denoise_gated_state *denoise_gated_init(void *memory, denoise_gated_invoke_fn invoke, void *ctx)
{
    denoise_gated_state *st = (denoise_gated_state *)memory;

    if (!memory || !invoke)
        return NULL;
    memset(st, 0, sizeof(*st));
    st->invoke = invoke;
    st->ctx = ctx;
    if (denoise_stft_init(&st->stft))
        return NULL;
    denoise_gated_reset(st);
    return st;
}

denoise_gated_state *denoise_gated_create(denoise_gated_invoke_fn invoke, void *ctx)
{
    void *memory;
    denoise_gated_state *st;

    if (!invoke)
        return NULL;
    memory = malloc(sizeof(denoise_gated_state));
    st = denoise_gated_init(memory, invoke, ctx);
    if (!st)
        free(memory);
    return st;
}

static void reset_states(denoise_gated_state *st)
{
    int i;

    st->current = 0;
    for (i = 0; i < DENOISE_NUM_STATES; i++)
        memset(st->states[0] + denoise_gated_state_layout[i].offset, denoise_gated_state_layout[i].init, (size_t)denoise_gated_state_layout[i].size);
}

void denoise_gated_reset(denoise_gated_state *st)
{
    denoise_stft_reset(&st->stft);
    reset_states(st);
    memset(st->ran, 0, sizeof(st->ran));
}

void denoise_gated_destroy(denoise_gated_state *st)
{
    free(st);
}

int denoise_gated_ran(const denoise_gated_state *st, int k)
{
    return k >= 0 && k < DENOISE_NUM_BRANCHES && st->ran[k];
}

static int8_t *kept(denoise_gated_state *st, int where, int offset)
{
    if (where == DENOISE_KEPT_STATES_IN)
        return st->states[st->current] + offset;
    if (where == DENOISE_KEPT_STATES_OUT)
        return st->states[1 - st->current] + offset;
    return st->work + offset;
}

/* transforms.energies: log10(mean(re^2 + im^2 over each band of DENOISE_ENERGY_WIDTH bins) + 1e-8).
 * Summed in order: numpy's pairwise sum can round the last bit differently, which moves a quantised
 * energy only where it lies within float rounding of a step, like the FFT's rounding does. */
static void energies(const denoise_gated_state *st, float *e)
{
    int b, k;

    for (b = 0; b < DENOISE_ENERGY_BANDS; b++) {
        float sum = 0.0f;
        for (k = b * DENOISE_ENERGY_WIDTH; k < (b + 1) * DENOISE_ENERGY_WIDTH; k++)
            sum += st->stft.spec[k].re * st->stft.spec[k].re + st->stft.spec[k].im * st->stft.spec[k].im;
        e[b] = log10f(sum / (float)DENOISE_ENERGY_WIDTH + 1e-8f);
    }
}

/* Fills the part's inputs as their tensors say, then runs it. */
static int run(denoise_gated_state *st, int part)
{
    const denoise_gated_part *p = &denoise_gated_parts[part];
    const int8_t *in[DENOISE_MAX_IO];
    int8_t *out[DENOISE_MAX_IO];
    float e[DENOISE_ENERGY_BANDS];
    int i, j;

    for (i = 0; i < p->num_inputs; i++) {
        const denoise_gated_tensor *t = &denoise_gated_tensors[p->inputs + i];
        int8_t *q = kept(st, t->kept, t->offset);
        if (t->fill == DENOISE_FILL_FEATURES) {
            denoise_stft_features(&st->stft, q, t->scale, t->zero_point);
        } else if (t->fill == DENOISE_FILL_ENERGIES) {
            energies(st, e);
            for (j = 0; j < t->size; j++)
                q[j] = denoise_quantize(e[j], t->scale, t->zero_point);
        } else if (t->fill == DENOISE_FILL_REQUANTISE) {
            const int8_t *src = kept(st, t->from_kept, t->from_offset);
            for (j = 0; j < t->size; j++)
                q[j] = denoise_quantize(denoise_dequantize(src[j], t->from_scale, t->from_zero_point), t->scale, t->zero_point);
        }
        in[i] = q;
    }
    for (i = 0; i < p->num_outputs; i++) {
        const denoise_gated_tensor *t = &denoise_gated_tensors[p->outputs + i];
        out[i] = kept(st, t->kept, t->offset);
    }
    return st->invoke(st->ctx, part, in, out);
}

/* The dequantised z terms of the parts that ran, summed per bin in call order (as the runtime adds
 * them), and the mask bound applied to the spectrum. */
static void mask(denoise_gated_state *st)
{
    const denoise_gated_tensor *terms[DENOISE_NUM_PARTS];
    const int8_t *q[DENOISE_NUM_PARTS];
    int n = 0, i, k;

    for (i = 0; i < DENOISE_NUM_PARTS; i++) {
        if (denoise_gated_parts[i].z < 0 || (i >= DENOISE_PART_BRANCH0 && !st->ran[i - DENOISE_PART_BRANCH0]))
            continue;
        terms[n] = &denoise_gated_tensors[denoise_gated_parts[i].z];
        q[n] = kept(st, terms[n]->kept, terms[n]->offset);
        n++;
    }
    for (k = 0; k < DENOISE_BINS; k++) {
        float zr = 0.0f, zi = 0.0f;
        for (i = 0; i < n; i++) {
            zr += denoise_dequantize(q[i][k], terms[i]->scale, terms[i]->zero_point);
            zi += denoise_dequantize(q[i][DENOISE_BINS + k], terms[i]->scale, terms[i]->zero_point);
        }
        denoise_stft_mask(&st->stft, k, zr, zi);
    }
}

/* The states of branch k after a frame it was skipped: zeroed, or held from the start of the frame. */
static void skip(denoise_gated_state *st, int k)
{
    int i;

    for (i = 0; i < DENOISE_NUM_STATES; i++) {
        const denoise_gated_state_slot *s = &denoise_gated_state_layout[i];
        if (s->part != DENOISE_PART_BRANCH0 + k)
            continue;
        if (s->zeroed)
            memset(kept(st, DENOISE_KEPT_STATES_OUT, s->offset), s->zero, (size_t)s->size);
        else
            memcpy(kept(st, DENOISE_KEPT_STATES_OUT, s->offset), kept(st, DENOISE_KEPT_STATES_IN, s->offset), (size_t)s->size);
    }
}

int denoise_gated_process_frame(denoise_gated_state *st, float *out, const float *in)
{
    const denoise_gated_tensor *logits = &denoise_gated_tensors[DENOISE_LOGITS];
    int k, rc;

    denoise_stft_analyse(&st->stft, in);
    memset(st->ran, 0, sizeof(st->ran));
    for (k = DENOISE_PART_TRUNK, rc = 0; k < DENOISE_PART_BRANCH0 && !rc; k++)
        rc = run(st, k);
    for (k = 0; k < DENOISE_NUM_BRANCHES && !rc; k++) {
        st->ran[k] = kept(st, logits->kept, logits->offset)[k] > logits->zero_point;
        if (st->ran[k])
            rc = run(st, DENOISE_PART_BRANCH0 + k);
        else
            skip(st, k);
    }
    if (rc) {
        reset_states(st);
        memset(st->ran, 0, sizeof(st->ran));
    } else {
        mask(st);
        st->current = 1 - st->current;
    }
    denoise_stft_synthesise(&st->stft, out);
    return rc;
}
