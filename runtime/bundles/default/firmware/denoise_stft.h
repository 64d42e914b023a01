/* The signal side of the streaming loop, shared by the plain loop (denoise.c) and the gated one
 * (denoise_gated.c): framing with the sqrt-Hann window, real FFT, compressed features, the bounded
 * complex mask, inverse FFT and overlap-add, and int8 quantisation, all as the Python engine does
 * them (runtime/engine.py, runtime/backends.py). Sizes come from the bundle's denoise_config.h. */
#ifndef DENOISE_STFT_H
#define DENOISE_STFT_H

#include <stdint.h>

#include "denoise_config.h"
#include "denoise_fft.h"

#ifdef __cplusplus
extern "C" { /* TFLM firmware is C++ */
#endif

typedef struct {
    denoise_fft fft;
    denoise_cpx twiddle[DENOISE_N_FFT];
    denoise_cpx work[DENOISE_N_FFT];
    denoise_cpx spec[DENOISE_BINS]; /* the current frame's spectrum; masked in place */
    float window[DENOISE_WIN];
    float frame[DENOISE_WIN]; /* the last DENOISE_WIN input samples */
    float ola[DENOISE_WIN];   /* overlap-add of the frames' output; its first hop is complete */
    float buf[DENOISE_N_FFT];
} denoise_stft;

/* Window and FFT; then denoise_stft_reset. Returns 0, or -1 when the FFT cannot take DENOISE_N_FFT. */
int denoise_stft_init(denoise_stft *s);

/* Clears the audio buffers: the stream starts with DENOISE_WIN - DENOISE_HOP zeros. */
void denoise_stft_reset(denoise_stft *s);

/* Shifts in[DENOISE_HOP] into the frame (non-finite samples count as zeros) and transforms it into
 * spec. */
void denoise_stft_analyse(denoise_stft *s, const float *in);

/* transforms.features of spec, quantised: features[3 * DENOISE_BINS], laid out as [1, 3, 1, bins]. */
void denoise_stft_features(const denoise_stft *s, int8_t *features, float scale, int zero_point);

/* Multiplies bin k of spec by the bounded mask of z = zr + i zi (the model output's [1, 2, 1, bins]
 * values of bin k, dequantised). */
void denoise_stft_mask(denoise_stft *s, int k, float zr, float zi);

/* Inverse FFT of spec, window, overlap-add; out[DENOISE_HOP] gets the completed hop. */
void denoise_stft_synthesise(denoise_stft *s, float *out);

/* round(x / scale) + zero_point, half to even, saturated to int8. */
int8_t denoise_quantize(float x, float scale, int zero_point);

/* (q - zero_point) * scale in float32. */
float denoise_dequantize(int8_t q, float scale, int zero_point);

#ifdef __cplusplus
}
#endif

#endif /* DENOISE_STFT_H */
