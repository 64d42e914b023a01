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

/* The golden calls of part PART (DIR/PART.int8io.npz): *calls of them, the frame of each in
 * *frames, and for each of its n int8 tensors (names[i], sizes[i] values a call) the values of
 * every call, [calls, sizes[i]], in values[i] (malloc'ed). 0, or 2 after one error line. */
int denoise_calls_load(const char *dir, const char *part, int n, const char *const *names, const int *sizes, long *calls, int **frames,
                       int8_t **values);

/* DIR/NAME opened for writing; NULL after one error line. */
FILE *denoise_dump_open(const char *dir, const char *name);

#endif /* DENOISE_GOLDEN_H */
