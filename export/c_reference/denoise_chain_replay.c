/* Replays a two-stage bundle's golden calls through the chain C loop on a host, each stage call
 * answered by the golden outputs of that call: a check of a port of the loop (FFT, features, mask,
 * estimate, flow, the eps generator, quantisation, states, unflow, overlap-add) that needs no
 * interpreter.
 *
 *   cc -std=c99 -O2 -o denoise_chain_replay denoise_chain_replay.c denoise_chain.c denoise_stft.c denoise_fft.c denoise_golden.c -lm
 *   ./denoise_chain_replay ../golden [DUMP_DIR]
 *
 * First the generator: denoise_chain_eps of every golden frame against golden/eps.npy (the eps the
 * Python runtime fed; zeros for a bundle without noise). Then it streams golden/audio_in.npy.
 * Stage s's c-th call must come on frame frames[c] of golden/<s>.int8io.npz; the stand-in
 * compares the inputs it is given with that call's inputs and returns its outputs. Every golden
 * call must be made, the states must equal the golden ones, eps within float rounding, the values
 * computed from the spectrum (features, estimate, noisy) may be 1 LSB off on at most
 * DENOISE_FEATURE_FLIPS of them, and the audio must equal golden/audio_out_replay.npy (the Python
 * engine under the same stand-in) up to float rounding.
 * With DUMP_DIR, writes there per stage <stage>.i8 (the inputs of each of its calls, concatenated
 * in input order), eps.f32 (the generator's eps, [frames, 2, bins]) and audio_out.f32.
 * Exit status: 0 passed, 1 failed, 2 unreadable input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise_chain.h"
#include "denoise_golden.h"

/* Largest abs difference of the generator's eps to golden/eps.npy, relative to max(1, |eps|):
 * the same double-precision formula through another libm may round the last float bit otherwise. */
#define DENOISE_EPS_TOLERANCE 1e-6f

typedef struct {
    denoise_golden_calls stages[DENOISE_NUM_STAGES];
    long t;
    long spectral, spectral_diffs, spectral_max, eps, eps_diffs, eps_max, states, state_diffs; /* inputs compared */
    char unexpected[256]; /* the first call without a golden one */
} replay;

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "error: %s: %s\n", path, what);
    return 2;
}

static int stand_in(void *ctx, int stage, const int8_t *const *inputs, int8_t *const *outputs)
{
    replay *r = (replay *)ctx;
    denoise_golden_calls *g = &r->stages[stage];
    const denoise_chain_stage *p = &denoise_chain_stages[stage];
    const long c = g->next;
    long unused = 0;
    int i;

    if (c >= g->calls || g->frames[c] != r->t) {
        if (!r->unexpected[0])
            snprintf(r->unexpected, sizeof r->unexpected, "%s was called on frame %ld, where its golden calls have none", p->name, r->t);
        return 1;
    }
    for (i = 0; i < p->num_inputs; i++) {
        const denoise_chain_tensor *t = &denoise_chain_tensors[p->inputs + i];
        const int8_t *want = g->values[i] + c * t->size;
        if (t->fill == DENOISE_CHAIN_FILL_NONE)
            denoise_compare(inputs[i], want, t->size, &r->states, &r->state_diffs, &unused);
        else if (t->fill == DENOISE_CHAIN_FILL_EPS)
            denoise_compare(inputs[i], want, t->size, &r->eps, &r->eps_diffs, &r->eps_max);
        else
            denoise_compare(inputs[i], want, t->size, &r->spectral, &r->spectral_diffs, &r->spectral_max);
        if (g->dump)
            fwrite(inputs[i], 1, (size_t)t->size, g->dump);
    }
    for (i = 0; i < p->num_outputs; i++) {
        const int size = denoise_chain_tensors[p->outputs + i].size;
        memcpy(outputs[i], g->values[p->num_inputs + i] + c * size, (size_t)size);
    }
    g->next++;
    return 0;
}

/* The golden calls of one stage; 0, or 2 after an error line. */
static int load_stage(denoise_golden_calls *g, const denoise_chain_stage *p, const char *dir, const char *dump)
{
    const char *names[DENOISE_MAX_IO * 2];
    int sizes[DENOISE_MAX_IO * 2], i;

    for (i = 0; i < p->num_inputs + p->num_outputs; i++) {
        const denoise_chain_tensor *t = &denoise_chain_tensors[i < p->num_inputs ? p->inputs + i : p->outputs + i - p->num_inputs];
        names[i] = t->name;
        sizes[i] = t->size;
    }
    return denoise_golden_calls_load(g, dir, p->name, p->num_inputs + p->num_outputs, names, sizes, dump);
}

/* The generator against golden/eps.npy ([frames, bins, 2]); returns the largest relative difference. */
static float check_eps(const float *golden, long frames, FILE *dump)
{
    float eps[2 * DENOISE_BINS], worst = 0.0f;
    long t;
    int f, part;

    for (t = 0; t < frames; t++) {
        if (DENOISE_EPS_SEEDED)
            denoise_chain_eps(DENOISE_EPS_SEED, (uint64_t)t, eps);
        else
            memset(eps, 0, sizeof eps);
        for (f = 0; f < DENOISE_BINS; f++)
            for (part = 0; part < 2; part++) {
                const float want = golden[(t * DENOISE_BINS + f) * 2 + part];
                worst = fmaxf(worst, fabsf(eps[part * DENOISE_BINS + f] - want) / fmaxf(1.0f, fabsf(want)));
            }
        if (dump)
            fwrite(eps, sizeof(float), 2 * DENOISE_BINS, dump);
    }
    return worst;
}

int main(int argc, char **argv)
{
    static replay r;
    long n_in, n_out, n_eps, frames, t, missing = 0;
    float *audio, *expected, *golden_eps, *y, peak, diff, eps_diff;
    denoise_chain_state *st;
    FILE *dump = NULL;
    int k, passed;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s GOLDEN_DIR [DUMP_DIR]\n", argv[0]);
        return 2;
    }
    audio = denoise_npy_load(argv[1], "audio_in.npy", "<f4", sizeof(float), &n_in);
    expected = denoise_npy_load(argv[1], "audio_out_replay.npy", "<f4", sizeof(float), &n_out);
    golden_eps = denoise_npy_load(argv[1], "eps.npy", "<f4", sizeof(float), &n_eps);
    if (!audio || !expected || !golden_eps)
        return 2;
    frames = n_in / DENOISE_HOP;
    if (n_in % DENOISE_HOP || n_out != n_in || n_eps != frames * DENOISE_BINS * 2)
        return fail("golden audio and eps of other sizes than denoise_config.h says (vectors of another bundle?)", argv[1]);
    for (k = 0; k < DENOISE_NUM_STAGES; k++)
        if (load_stage(&r.stages[k], &denoise_chain_stages[k], argv[1], argc == 3 ? argv[2] : NULL))
            return 2;
    if (argc == 3 && !(dump = denoise_dump_open(argv[2], "eps.f32")))
        return 2;
    eps_diff = check_eps(golden_eps, frames, dump);
    if (dump)
        fclose(dump);
    if (argc == 3 && !(dump = denoise_dump_open(argv[2], "audio_out.f32")))
        return 2;

    st = denoise_chain_create(stand_in, &r);
    y = calloc((size_t)n_in, sizeof(float)); /* zeros where a failed replay stops */
    if (!st || !y)
        return fail("out of memory", argv[0]);
    for (t = 0; t < frames && !r.unexpected[0]; t++) {
        r.t = t;
        if (denoise_chain_process_frame(st, y + t * DENOISE_HOP, audio + t * DENOISE_HOP) && !r.unexpected[0])
            return fail("the stand-in failed", argv[1]);
    }
    diff = denoise_max_diff(y, expected, n_in, &peak);
    if (dump) {
        fwrite(y, sizeof(float), (size_t)n_in, dump);
        fclose(dump);
    }

    printf("frames: %ld\n", frames);
    printf("eps generator: max difference %.3g to eps.npy (%s, tolerance %.0e)\n", eps_diff, DENOISE_EPS_SEEDED ? "seeded" : "zero",
           DENOISE_EPS_TOLERANCE);
    if (r.unexpected[0])
        printf("calls: %s (frame %ld stops the replay)\n", r.unexpected, r.t);
    printf("calls made of the golden ones:");
    for (k = 0; k < DENOISE_NUM_STAGES; k++) {
        printf(" %s %ld of %ld%s", denoise_chain_stages[k].name, r.stages[k].next, r.stages[k].calls, k + 1 < DENOISE_NUM_STAGES ? "," : "\n");
        missing += r.stages[k].calls - r.stages[k].next;
    }
    printf("features, estimate and noisy: %ld of %ld differ, by at most %ld LSB\n", r.spectral_diffs, r.spectral, r.spectral_max);
    printf("eps: %ld of %ld differ, by at most %ld LSB\n", r.eps_diffs, r.eps, r.eps_max);
    printf("states: %ld of %ld differ\n", r.state_diffs, r.states);
    printf("audio: max abs difference %.3g (peak %.3g, tolerance %.0e of the peak)\n", diff, peak, DENOISE_AUDIO_TOLERANCE);
    passed = !r.unexpected[0] && missing == 0 && eps_diff <= DENOISE_EPS_TOLERANCE && r.spectral_max <= 1
             && (double)r.spectral_diffs <= DENOISE_FEATURE_FLIPS * (double)r.spectral && r.eps_max <= 1
             && (double)r.eps_diffs <= DENOISE_FEATURE_FLIPS * (double)r.eps && r.state_diffs == 0 && diff <= DENOISE_AUDIO_TOLERANCE * peak;
    printf("%s\n", passed ? "passed" : "FAILED");
    for (k = 0; k < DENOISE_NUM_STAGES; k++)
        denoise_golden_calls_free(&r.stages[k]);
    denoise_chain_destroy(st);
    free(y);
    free(audio);
    free(expected);
    free(golden_eps);
    return passed ? 0 : 1;
}
