/* Streaming speech denoiser: the reference loop of a tiny-denoise bundle in plain C99.
 *
 * One call per hop: DENOISE_HOP samples in, DENOISE_HOP samples out, the output lagging the input
 * by DENOISE_WIN - DENOISE_HOP samples. It does what the bundle's manifest describes (signal,
 * transforms, states) exactly as the Python engine does: framing with the sqrt-Hann window, real
 * FFT, compressed features, int8 quantisation, one model call, dequantisation, bounded complex
 * mask, inverse FFT, overlap-add, and the int8 states fed back every frame. Everything that differs
 * between bundles (sizes, scales, zero points, state layout) is in the generated denoise_config.h.
 *
 * The model call is the caller's: denoise_create takes a function that runs the integer model
 * (model.int8io.tflite) once, for firmware a TensorFlow Lite Micro invoke. */
#ifndef DENOISE_H
#define DENOISE_H

#include <stddef.h>
#include <stdint.h>

#include "denoise_config.h"

#ifdef __cplusplus
extern "C" { /* TFLM firmware is C++ */
#endif

typedef struct denoise_state denoise_state;

/* Runs the model once; returns 0 on success, anything else on failure.
 *   features   [DENOISE_FEATURES_LEN]: graph input 0, laid out as its [1, 3, 1, bins]
 *   states_in  [DENOISE_STATES_LEN]:   graph inputs 1..DENOISE_NUM_STATES, concatenated in this
 *                                      order (denoise_state_layout gives each one's offset and size)
 *   z          [DENOISE_Z_LEN]:        graph output 0, [1, 2, 1, bins]
 *   states_out [DENOISE_STATES_LEN]:   graph outputs 1..DENOISE_NUM_STATES (each <state>_out),
 *                                      concatenated in the same order
 * The buffers belong to the loop and stay valid for the call only. */
typedef int (*denoise_invoke_fn)(void *ctx, const int8_t *features, const int8_t *states_in, int8_t *z, int8_t *states_out);

/* One state tensor of the model, in manifest order. */
typedef struct {
    const char *name;    /* graph input */
    const char *output;  /* graph output holding the next value */
    int offset;          /* in the concatenated state buffer */
    int size;            /* values */
    int8_t init;         /* start value: the manifest's init, quantised with this state's scale and zero point */
} denoise_state_slot;

extern const denoise_state_slot denoise_state_layout[DENOISE_NUM_STATES];

/* Bytes a denoise_state needs (for denoise_init on caller's memory). */
size_t denoise_size(void);

/* Sets up a denoiser in memory of denoise_size() bytes, aligned as malloc aligns; ctx is passed to
 * every invoke. No allocation. Returns NULL when invoke or memory is NULL. */
denoise_state *denoise_init(void *memory, denoise_invoke_fn invoke, void *ctx);

/* denoise_init on malloc'ed memory; NULL when that fails. Free with denoise_destroy. */
denoise_state *denoise_create(denoise_invoke_fn invoke, void *ctx);

/* Starts a new stream: clears the audio buffers and sets the states to their start values. */
void denoise_reset(denoise_state *st);

/* Processes one hop: in[DENOISE_HOP] -> out[DENOISE_HOP] (they may be the same buffer).
 * Non-finite input samples count as zeros. Returns 0, or the invoke's non-zero result; then the
 * frame passes unchanged (mask 1) and the states restart from their start values. */
int denoise_process_frame(denoise_state *st, float *out, const float *in);

void denoise_destroy(denoise_state *st);

#ifdef __cplusplus
}
#endif

#endif /* DENOISE_H */
