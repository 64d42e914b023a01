/* Streaming speech denoiser, gated: the reference loop of a gated tiny-denoise bundle in plain C99.
 *
 * One call per hop, like the plain loop (denoise.h): DENOISE_HOP samples in, DENOISE_HOP samples
 * out, lagging the input by DENOISE_WIN - DENOISE_HOP samples. Per frame it follows the manifest's
 * gating protocol on the integer parts (<part>.int8io.tflite) as gating.integer_io chains them, as
 * the Python runtime does: features and band energies in float, quantised with the input
 * parameters of the part that takes them; the parts every frame calls (the trunk, which runs the
 * policy too in gating protocol version 2; in version 1 the trunk, then the policy); then branch k
 * only if logits[k] is above the zero point of logits. Every part input that comes from another
 * part is requantised from its source's scale and zero point to the part's own; a skipped branch is not called, its
 * zeroed_when_skipped states become their zero point and its GRU hidden is held. z is the float sum
 * of the dequantised z terms of the parts that ran; then the bounded mask, inverse FFT and
 * overlap-add. Everything that differs between bundles (parts, tensors, scales, zero points, state
 * layout) is in the generated denoise_config.h.
 *
 * The part calls are the caller's: denoise_gated_create takes one function that runs a given part
 * once, for firmware a TensorFlow Lite Micro invoke of that part's interpreter. */
#ifndef DENOISE_GATED_H
#define DENOISE_GATED_H

#include <stddef.h>
#include <stdint.h>

#include "denoise_config.h"

#ifdef __cplusplus
extern "C" { /* TFLM firmware is C++ */
#endif

typedef struct denoise_gated_state denoise_gated_state;

/* Runs part `part` (an index into denoise_gated_parts: DENOISE_PART_TRUNK and the other parts
 * before DENOISE_PART_BRANCH0, DENOISE_PART_BRANCH0 + k) once; returns 0 on success, anything else on failure.
 *   inputs[i]   graph input i of the part, in the order of its manifest entry (TFLM's input(i)):
 *               denoise_gated_tensors[denoise_gated_parts[part].inputs + i].size int8 values
 *   outputs[i]  graph output i, denoise_gated_tensors[denoise_gated_parts[part].outputs + i].size
 * The buffers belong to the loop and stay valid for the call only; inputs and outputs never overlap. */
typedef int (*denoise_gated_invoke_fn)(void *ctx, int part, const int8_t *const *inputs, int8_t *const *outputs);

/* Where the loop keeps a tensor (denoise_gated_tensor.kept, .from_kept). */
enum {
    DENOISE_KEPT_STATES_IN,  /* the states at the start of the frame, in their owners' parameters */
    DENOISE_KEPT_STATES_OUT, /* the states the parts that ran this frame wrote (<state>_out) */
    DENOISE_KEPT_WORK        /* outputs that are not states; then the inputs the loop fills for the current call */
};

/* How the loop fills a part input before the call (denoise_gated_tensor.fill). */
enum {
    DENOISE_FILL_NONE,      /* the part reads it where it is kept: its own state, or a value already in its parameters */
    DENOISE_FILL_FEATURES,  /* transforms.features, quantised with this tensor's parameters */
    DENOISE_FILL_ENERGIES,  /* transforms.energies, quantised with this tensor's parameters */
    DENOISE_FILL_REQUANTISE /* quantise(dequantise(source)) from the source's parameters to this tensor's */
};

/* One graph input or output of a part. */
typedef struct {
    const char *name;    /* tensor name, as in the part's manifest entry */
    int size;            /* int8 values */
    int kept, offset;    /* where the part reads (input) or writes (output) it */
    float scale;         /* its parameters in the part's io */
    int zero_point;
    int fill;            /* inputs: DENOISE_FILL_... */
    int from_kept, from_offset; /* DENOISE_FILL_REQUANTISE: where the source is kept, */
    float from_scale;           /* and its parameters */
    int from_zero_point;
} denoise_gated_tensor;

/* One part, in call order. */
typedef struct {
    const char *name;           /* trunk (version 1: then policy), branch<k>: <name>.int8io.tflite */
    int inputs, num_inputs;     /* its inputs: denoise_gated_tensors[inputs .. inputs + num_inputs - 1] */
    int outputs, num_outputs;   /* its outputs, likewise */
    int z;                      /* the index in denoise_gated_tensors of its z term (z_trunk, z_branch<k>), -1 for a version-1 policy */
} denoise_gated_part;

/* One state, in manifest order; kept in its owning part's input parameters (its <state>_out has
 * the same ones). */
typedef struct {
    const char *name;    /* graph input of its part */
    const char *output;  /* graph output holding the next value */
    int part;            /* owning part */
    int offset;          /* in the concatenated state buffer */
    int size;            /* values */
    int8_t init;         /* start value: the manifest's init, quantised with its parameters */
    int8_t zero;         /* its zero point: the value of a zeroed state */
    int zeroed;          /* 1: in its branch's zeroed_when_skipped, 0: held when skipped (or not a branch's) */
} denoise_gated_state_slot;

extern const denoise_gated_tensor denoise_gated_tensors[DENOISE_NUM_TENSORS];
extern const denoise_gated_part denoise_gated_parts[DENOISE_NUM_PARTS];
extern const denoise_gated_state_slot denoise_gated_state_layout[DENOISE_NUM_STATES];

/* Bytes a denoise_gated_state needs (for denoise_gated_init on caller's memory). */
size_t denoise_gated_size(void);

/* Sets up a denoiser in memory of denoise_gated_size() bytes, aligned as malloc aligns; ctx is
 * passed to every invoke. No allocation. Returns NULL when invoke or memory is NULL. */
denoise_gated_state *denoise_gated_init(void *memory, denoise_gated_invoke_fn invoke, void *ctx);

/* denoise_gated_init on malloc'ed memory; NULL when that fails. Free with denoise_gated_destroy. */
denoise_gated_state *denoise_gated_create(denoise_gated_invoke_fn invoke, void *ctx);

/* Starts a new stream: clears the audio buffers and sets the states to their start values. */
void denoise_gated_reset(denoise_gated_state *st);

/* Processes one hop: in[DENOISE_HOP] -> out[DENOISE_HOP] (they may be the same buffer).
 * Non-finite input samples count as zeros. Returns 0, or the first non-zero invoke result; then
 * the frame passes unchanged (mask 1), no further part runs, and the states restart from their
 * start values. */
int denoise_gated_process_frame(denoise_gated_state *st, float *out, const float *in);

/* 1 when branch k (0 .. DENOISE_NUM_BRANCHES - 1) ran in the last frame, else 0. */
int denoise_gated_ran(const denoise_gated_state *st, int k);

void denoise_gated_destroy(denoise_gated_state *st);

#ifdef __cplusplus
}
#endif

#endif /* DENOISE_GATED_H */
