/* What the host checks (denoise_replay, denoise_gated_replay, denoise_chain_replay) share: their
 * tolerances, a reader of a bundle's golden arrays (numpy .npy files, and members of the
 * uncompressed .npz archives numpy.savez writes) and of a part's golden calls, and the dump files.
 * Host code, not needed on the device. */
#ifndef DENOISE_GOLDEN_H
#define DENOISE_GOLDEN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Largest abs difference of the output audio to audio_out_replay, relative to its peak (float
 * rounding: about 2e-7). */
#define DENOISE_AUDIO_TOLERANCE 1e-5f
/* Largest fraction of the values computed from the spectrum (features; band energies) that may be
 * 1 LSB off the golden ones: where a value lies within float rounding of a quantisation step, the
 * golden frames (PyTorch's FFT) and the loop's own FFT can round it to neighbouring steps. */
#define DENOISE_FEATURE_FLIPS 0.001

/* The values of DIR/NAME, a little-endian, C-ordered version 1 .npy file of dtype descr ("<f4",
 * "|i1", "|u1", "<i4"), item bytes each, as malloc'ed memory; *count: how many. NULL after one
 * "error: PATH: what is wrong" line on stderr. */
void *denoise_npy_load(const char *dir, const char *name, const char *descr, size_t item, long *count);

/* The same for the array MEMBER (MEMBER.npy in the archive) of the .npz file DIR/NAME. */
void *denoise_npz_load(const char *dir, const char *name, const char *member, const char *descr, size_t item, long *count);

/* The golden calls of one part (or stage) of a bundle, from DIR/<part>.int8io.npz. */
typedef struct {
    long calls, next; /* golden calls, and the next one to answer */
    int *frames;      /* the frame of each call */
    int tensors;      /* its inputs, then its outputs */
    int8_t **values;  /* per tensor, the values of every call: [calls, size] */
    FILE *dump;       /* where the replay writes the inputs it is given, or NULL */
} denoise_golden_calls;

/* Loads the calls of part PART with n int8 tensors (names[i], sizes[i] values a call, inputs then
 * outputs) and, with a DUMP directory, opens DUMP/PART.i8. 0, or 2 after one error line. */
int denoise_golden_calls_load(denoise_golden_calls *g, const char *dir, const char *part, int n, const char *const *names, const int *sizes,
                              const char *dump);

void denoise_golden_calls_free(denoise_golden_calls *g);

/* Adds size to *count, and counts the values of got that differ from want (*diffs) and the largest
 * difference (*max). */
void denoise_compare(const int8_t *got, const int8_t *want, int size, long *count, long *diffs, long *max);

/* The largest abs difference of y[n] to want[n]; *peak: the largest abs value of want. */
float denoise_max_diff(const float *y, const float *want, long n, float *peak);

/* DIR/NAME opened for writing; NULL after one error line. */
FILE *denoise_dump_open(const char *dir, const char *name);

#endif /* DENOISE_GOLDEN_H */
