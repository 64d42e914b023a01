/* Replays a bundle's golden vectors through the C loop on a host, the golden model outputs
 * standing in for the model: a check of a port of the loop (FFT, features, quantisation, states,
 * mask, overlap-add) that needs no interpreter.
 *
 *   cc -std=c99 -O2 -o denoise_replay denoise_replay.c denoise.c denoise_stft.c denoise_fft.c denoise_golden.c -lm
 *   ./denoise_replay ../golden [DUMP_DIR]
 *
 * Streams golden/audio_in.npy; on frame t the stand-in compares the features and states it is
 * given with int8io_input[t] and int8io_states_in[t], and returns int8io_output[t] and
 * int8io_states_out[t]. The audio must then equal golden/audio_out_replay.npy (the Python engine
 * under the same stand-in) up to float rounding. Features may differ by 1 LSB where a value lies
 * within float rounding of a quantisation step (the golden frames come from another FFT): on the
 * shipped default bundle 1 of 96,600.
 * With DUMP_DIR, writes features.i8, states_in.i8 (as given to the stand-in) and audio_out.f32 there.
 * Exit status: 0 passed, 1 failed, 2 unreadable input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise.h"
#include "denoise_golden.h"

typedef struct {
    long frames;
    int8_t *input, *output, *states_in, *states_out;
    long t;
    long feature_diffs, feature_max, state_diffs;
    FILE *features_dump, *states_dump;
} replay;

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "error: %s: %s\n", path, what);
    return 2;
}

static int stand_in(void *ctx, const int8_t *features, const int8_t *states_in, int8_t *z, int8_t *states_out)
{
    replay *r = (replay *)ctx;
    const int8_t *want, *state;
    long i;

    if (r->t >= r->frames)
        return -1;
    want = r->input + r->t * DENOISE_FEATURES_LEN;
    state = r->states_in + r->t * DENOISE_STATES_LEN;
    for (i = 0; i < DENOISE_FEATURES_LEN; i++) {
        const long d = labs((long)features[i] - want[i]);
        r->feature_diffs += d != 0;
        if (d > r->feature_max)
            r->feature_max = d;
    }
    for (i = 0; i < DENOISE_STATES_LEN; i++)
        r->state_diffs += states_in[i] != state[i];
    if (r->features_dump) {
        fwrite(features, 1, DENOISE_FEATURES_LEN, r->features_dump);
        fwrite(states_in, 1, DENOISE_STATES_LEN, r->states_dump);
    }
    memcpy(z, r->output + r->t * DENOISE_Z_LEN, DENOISE_Z_LEN);
    memcpy(states_out, r->states_out + r->t * DENOISE_STATES_LEN, DENOISE_STATES_LEN);
    r->t++;
    return 0;
}

static FILE *open_dump(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        fail("cannot write", path);
    return f;
}

int main(int argc, char **argv)
{
    replay r;
    long n_in, n_out, n[4], t, i;
    float *audio, *expected, *y, peak = 0.0f, diff = 0.0f;
    denoise_state *st;
    FILE *audio_dump = NULL;
    int passed;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s GOLDEN_DIR [DUMP_DIR]\n", argv[0]);
        return 2;
    }
    memset(&r, 0, sizeof r);
    audio = denoise_npy_load(argv[1], "audio_in.npy", "<f4", sizeof(float), &n_in);
    expected = denoise_npy_load(argv[1], "audio_out_replay.npy", "<f4", sizeof(float), &n_out);
    r.input = denoise_npy_load(argv[1], "int8io_input.npy", "|i1", 1, &n[0]);
    r.output = denoise_npy_load(argv[1], "int8io_output.npy", "|i1", 1, &n[1]);
    r.states_in = denoise_npy_load(argv[1], "int8io_states_in.npy", "|i1", 1, &n[2]);
    r.states_out = denoise_npy_load(argv[1], "int8io_states_out.npy", "|i1", 1, &n[3]);
    if (!audio || !expected || !r.input || !r.output || !r.states_in || !r.states_out)
        return 2;
    r.frames = n_in / DENOISE_HOP;
    if (n_in % DENOISE_HOP || n_out != n_in || n[0] != r.frames * DENOISE_FEATURES_LEN || n[1] != r.frames * DENOISE_Z_LEN
        || n[2] != r.frames * DENOISE_STATES_LEN || n[3] != r.frames * DENOISE_STATES_LEN)
        return fail("golden arrays of other sizes than denoise_config.h says (vectors of another bundle?)", argv[1]);
    if (argc == 3) {
        r.features_dump = open_dump(argv[2], "features.i8");
        r.states_dump = open_dump(argv[2], "states_in.i8");
        audio_dump = open_dump(argv[2], "audio_out.f32");
        if (!r.features_dump || !r.states_dump || !audio_dump)
            return 2;
    }

    st = denoise_create(stand_in, &r);
    y = malloc((size_t)n_in * sizeof(float));
    if (!st || !y)
        return fail("out of memory", argv[0]);
    for (t = 0; t < r.frames; t++)
        if (denoise_process_frame(st, y + t * DENOISE_HOP, audio + t * DENOISE_HOP))
            return fail("the stand-in failed", argv[1]);
    for (i = 0; i < n_in; i++) {
        peak = fmaxf(peak, fabsf(expected[i]));
        diff = fmaxf(diff, fabsf(y[i] - expected[i]));
    }
    if (audio_dump) {
        fwrite(y, sizeof(float), (size_t)n_in, audio_dump);
        fclose(audio_dump);
        fclose(r.features_dump);
        fclose(r.states_dump);
    }

    passed = r.feature_max <= 1 && (double)r.feature_diffs <= DENOISE_FEATURE_FLIPS * (double)(r.frames * DENOISE_FEATURES_LEN) && r.state_diffs == 0
             && diff <= DENOISE_AUDIO_TOLERANCE * peak;
    printf("frames: %ld\n", r.frames);
    printf("features: %ld of %ld differ, by at most %ld LSB\n", r.feature_diffs, r.frames * DENOISE_FEATURES_LEN, r.feature_max);
    printf("states: %ld of %ld differ\n", r.state_diffs, r.frames * DENOISE_STATES_LEN);
    printf("audio: max abs difference %.3g (peak %.3g, tolerance %.0e of the peak)\n", diff, peak, DENOISE_AUDIO_TOLERANCE);
    printf("%s\n", passed ? "passed" : "FAILED");
    denoise_destroy(st);
    free(y);
    free(audio);
    free(expected);
    free(r.input);
    free(r.output);
    free(r.states_in);
    free(r.states_out);
    return passed ? 0 : 1;
}
