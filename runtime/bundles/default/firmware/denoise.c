#include "denoise.h"

#include <stdlib.h>
#include <string.h>

#include "denoise_stft.h"

#if DENOISE_FEATURES_LEN != 3 * DENOISE_BINS || DENOISE_Z_LEN != 2 * DENOISE_BINS
#error "denoise_config.h: the model must take [1, 3, 1, bins] features and give a [1, 2, 1, bins] z"
#endif

const denoise_state_slot denoise_state_layout[DENOISE_NUM_STATES] = {DENOISE_STATE_LAYOUT};

struct denoise_state {
    denoise_invoke_fn invoke;
    void *ctx;
    denoise_stft stft;
    int8_t features[DENOISE_FEATURES_LEN];
    int8_t z[DENOISE_Z_LEN];
    int8_t states[2][DENOISE_STATES_LEN]; /* the current one is the next frame's states_in */
    int current;
};

size_t denoise_size(void)
{
    return sizeof(denoise_state);
}

denoise_state *denoise_init(void *memory, denoise_invoke_fn invoke, void *ctx)
{
    denoise_state *st = (denoise_state *)memory;

    if (!memory || !invoke)
        return NULL;
    memset(st, 0, sizeof(*st));
    st->invoke = invoke;
    st->ctx = ctx;
    if (denoise_stft_init(&st->stft))
        return NULL;
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
    denoise_stft_reset(&st->stft);
    reset_states(st);
}

void denoise_destroy(denoise_state *st)
{
    free(st);
}

int denoise_process_frame(denoise_state *st, float *out, const float *in)
{
    int8_t *states_in = st->states[st->current], *states_out = st->states[1 - st->current];
    int k, rc;

    denoise_stft_analyse(&st->stft, in);
    denoise_stft_features(&st->stft, st->features, DENOISE_FEATURES_SCALE, DENOISE_FEATURES_ZERO_POINT);
    rc = st->invoke(st->ctx, st->features, states_in, st->z, states_out);
    if (rc) {
        reset_states(st);
    } else {
        st->current = 1 - st->current;
        for (k = 0; k < DENOISE_BINS; k++)
            denoise_stft_mask(&st->stft, k, denoise_dequantize(st->z[k], DENOISE_Z_SCALE, DENOISE_Z_ZERO_POINT),
                              denoise_dequantize(st->z[DENOISE_BINS + k], DENOISE_Z_SCALE, DENOISE_Z_ZERO_POINT));
    }
    denoise_stft_synthesise(&st->stft, out);
    return rc;
}
