/* Streaming speech denoiser, two stages: the reference loop of a two-stage tiny-denoise bundle (a
 * student, then a MeanFlow corrector) in plain C99.
 *
 * One call per hop, like the plain loop (denoise.h): DENOISE_HOP samples in, DENOISE_HOP samples
 * out, lagging the input by DENOISE_WIN - DENOISE_HOP samples. Per frame it follows the manifest's
 * chain protocol on the integer stages (<stage>.int8io.tflite) as chain.integer_io says, as the
 * Python runtime does (runtime.backends.ChainRunner): the features in float, quantised with the
 * student's input parameters; the student; its z dequantised, the mask bound and the mask applied
 * to the frame (the estimate); flow() of the estimate and of the frame, and this frame's eps, each
 * quantised with the corrector's input parameters; the corrector; its output dequantised and taken
 * back by unflow(), which is the enhanced spectrum; inverse FFT and overlap-add. No integer tensor
 * passes from one stage to the other: every input that is not a state is a float made between the
 * stages and quantised, and every state is fed back as it is. eps comes from the bundle's generator
 * (denoise_chain_eps), at the frame's index in the stream. Everything that differs between bundles
 * (tensors, scales, zero points, state layout, flow power, eps seed) is in the generated
 * denoise_config.h.
 *
 * The stage calls are the caller's: denoise_chain_create takes one function that runs a given
 * stage once, for firmware a TensorFlow Lite Micro invoke of that stage's interpreter. */
#ifndef DENOISE_CHAIN_H
#define DENOISE_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include "denoise_config.h"

#ifdef __cplusplus
extern "C" { /* TFLM firmware is C++ */
#endif

typedef struct denoise_chain_state denoise_chain_state;

/* Runs stage `stage` (DENOISE_STAGE_STUDENT or DENOISE_STAGE_CORRECTOR, an index into
 * denoise_chain_stages) once; returns 0 on success, anything else on failure.
 *   inputs[i]   graph input i of the stage, in the order of its manifest entry (TFLM's input(i)):
 *               denoise_chain_tensors[denoise_chain_stages[stage].inputs + i].size int8 values
 *   outputs[i]  graph output i, denoise_chain_tensors[denoise_chain_stages[stage].outputs + i].size
 * The buffers belong to the loop and stay valid for the call only; inputs and outputs never overlap. */
typedef int (*denoise_chain_invoke_fn)(void *ctx, int stage, const int8_t *const *inputs, int8_t *const *outputs);

/* Where the loop keeps a tensor (denoise_chain_tensor.kept). */
enum {
    DENOISE_CHAIN_STATES_IN,  /* the states at the start of the frame */
    DENOISE_CHAIN_STATES_OUT, /* the states the stages write this frame (<state>_out) */
    DENOISE_CHAIN_WORK        /* the inputs the loop fills and the outputs that are not states */
};

/* How the loop fills a stage input before the call (denoise_chain_tensor.fill); each is quantised
 * with the tensor's own parameters. */
enum {
    DENOISE_CHAIN_FILL_NONE,     /* a state: read where it is kept */
    DENOISE_CHAIN_FILL_FEATURES, /* transforms.features of the frame */
    DENOISE_CHAIN_FILL_ESTIMATE, /* flow(mask * frame), [1, 2, 1, bins] */
    DENOISE_CHAIN_FILL_NOISY,    /* flow(frame) */
    DENOISE_CHAIN_FILL_EPS       /* this frame's eps (chain.eps) */
};

/* One graph input or output of a stage. */
typedef struct {
    const char *name;  /* tensor name, as in the stage's manifest entry */
    int size;          /* int8 values */
    int kept, offset;  /* where the stage reads (input) or writes (output) it */
    float scale;       /* its parameters in the stage's io */
    int zero_point;
    int fill;          /* inputs: DENOISE_CHAIN_FILL_... */
} denoise_chain_tensor;

/* One stage, in call order. */
typedef struct {
    const char *name;         /* student, corrector: <name>.int8io.tflite */
    int inputs, num_inputs;   /* its inputs: denoise_chain_tensors[inputs .. inputs + num_inputs - 1] */
    int outputs, num_outputs; /* its outputs, likewise */
} denoise_chain_stage;

/* One state, in manifest order; its <state>_out has the same parameters. */
typedef struct {
    const char *name;   /* graph input of its stage */
    const char *output; /* graph output holding the next value */
    int stage;          /* owning stage */
    int offset;         /* in the concatenated state buffer */
    int size;           /* values */
    int8_t init;        /* start value: the manifest's init, quantised with its parameters */
} denoise_chain_state_slot;

extern const denoise_chain_tensor denoise_chain_tensors[DENOISE_NUM_TENSORS];
extern const denoise_chain_stage denoise_chain_stages[DENOISE_NUM_STAGES];
extern const denoise_chain_state_slot denoise_chain_state_layout[DENOISE_NUM_STATES];

/* Bytes a denoise_chain_state needs (for denoise_chain_init on caller's memory). */
size_t denoise_chain_size(void);

/* Sets up a denoiser in memory of denoise_chain_size() bytes, aligned as malloc aligns; ctx is
 * passed to every invoke. No allocation. Returns NULL when invoke or memory is NULL. */
denoise_chain_state *denoise_chain_init(void *memory, denoise_chain_invoke_fn invoke, void *ctx);

/* denoise_chain_init on malloc'ed memory; NULL when that fails. Free with denoise_chain_destroy. */
denoise_chain_state *denoise_chain_create(denoise_chain_invoke_fn invoke, void *ctx);

/* Starts a new stream: clears the audio buffers, sets the states to their start values and eps
 * back to the stream's frame 0. */
void denoise_chain_reset(denoise_chain_state *st);

/* Processes one hop: in[DENOISE_HOP] -> out[DENOISE_HOP] (they may be the same buffer).
 * Non-finite input samples count as zeros. Returns 0, or the first non-zero invoke result; then
 * the frame passes unchanged, the corrector is not called after a failed student, and the states
 * and eps restart from the stream's start, as the Python engine restarts a runner's states. */
int denoise_chain_process_frame(denoise_chain_state *st, float *out, const float *in);

/* eps of frame `frame` of a stream seeded with `seed` (runtime.noise.gaussian, chain.eps.formula):
 * the SplitMix64 words 2 (frame * DENOISE_BINS + f) and the next, Box-Muller in double precision,
 * rounded to float. eps[2 * DENOISE_BINS], laid out as the corrector's input [1, 2, 1, bins]: the
 * real parts, then the imaginary parts. */
void denoise_chain_eps(uint64_t seed, uint64_t frame, float *eps);

void denoise_chain_destroy(denoise_chain_state *st);

#ifdef __cplusplus
}
#endif

#endif /* DENOISE_CHAIN_H */
