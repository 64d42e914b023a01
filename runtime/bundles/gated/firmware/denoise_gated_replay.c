/* Replays a gated bundle's golden calls through the gated C loop on a host, each part call answered
 * by the golden outputs of that call: a check of a port of the loop (FFT, features, energies, the
 * policy's gates, requantisation between parts, skipped branches' states, z, mask, overlap-add)
 * that needs no interpreter.
 *
 *   cc -std=c99 -O2 -o denoise_gated_replay denoise_gated_replay.c denoise_gated.c denoise_stft.c denoise_fft.c denoise_golden.c -lm
 *   ./denoise_gated_replay ../golden [DUMP_DIR]
 *
 * Streams golden/audio_in.npy. Part p's c-th call must come on frame frames[c] of
 * golden/<p>.int8io.npz; the stand-in compares the inputs it is given with that call's inputs and
 * returns its outputs. Every golden call must be made, the branches that ran must be
 * golden/gates_int8io.npy, every input must equal the golden one (features and energies: at most
 * 1 LSB off on at most DENOISE_FEATURE_FLIPS of them), and the audio must equal
 * golden/audio_out_replay.npy (the Python engine under the same stand-in) up to float rounding.
 * With DUMP_DIR, writes there per part <part>.i8 (the inputs of each of its calls, concatenated in
 * input order), and gates.u8 ([frames, branches]) and audio_out.f32.
 * Exit status: 0 passed, 1 failed, 2 unreadable input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise_gated.h"
#include "denoise_golden.h"

typedef struct {
    long calls, next; /* golden calls, and the next one to answer */
    int *frames;      /* the frame of each call */
    int8_t *values[DENOISE_MAX_IO * 2]; /* per input, then output: [calls, size] */
    FILE *dump;
} golden_part;

typedef struct {
    golden_part parts[DENOISE_NUM_PARTS];
    long t;
    long spectral, spectral_diffs, spectral_max, other, other_diffs; /* inputs compared */
    char unexpected[256];                                            /* the first call without a golden one */
} replay;

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "error: %s: %s\n", path, what);
    return 2;
}

static int stand_in(void *ctx, int part, const int8_t *const *inputs, int8_t *const *outputs)
{
    replay *r = (replay *)ctx;
    golden_part *g = &r->parts[part];
    const denoise_gated_part *p = &denoise_gated_parts[part];
    const long c = g->next;
    int i;
    long j;

    if (c >= g->calls || g->frames[c] != r->t) {
        if (!r->unexpected[0])
            snprintf(r->unexpected, sizeof r->unexpected, "%s was called on frame %ld, where its golden calls have none", p->name, r->t);
        return 1;
    }
    for (i = 0; i < p->num_inputs; i++) {
        const denoise_gated_tensor *t = &denoise_gated_tensors[p->inputs + i];
        const int8_t *want = g->values[i] + c * t->size;
        const int spectral = t->fill == DENOISE_FILL_FEATURES || t->fill == DENOISE_FILL_ENERGIES;
        for (j = 0; j < t->size; j++) {
            const long d = labs((long)inputs[i][j] - want[j]);
            if (spectral) {
                r->spectral_diffs += d != 0;
                if (d > r->spectral_max)
                    r->spectral_max = d;
            } else {
                r->other_diffs += d != 0;
            }
        }
        if (spectral)
            r->spectral += t->size;
        else
            r->other += t->size;
        if (g->dump)
            fwrite(inputs[i], 1, (size_t)t->size, g->dump);
    }
    for (i = 0; i < p->num_outputs; i++) {
        const int size = denoise_gated_tensors[p->outputs + i].size;
        memcpy(outputs[i], g->values[p->num_inputs + i] + c * size, (size_t)size);
    }
    g->next++;
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

/* The golden calls of one part; 0, or 2 after an error line. */
static int load_part(golden_part *g, const denoise_gated_part *p, const char *dir, const char *dump)
{
    char npz[256], dump_name[256];
    long n;
    int i;

    snprintf(npz, sizeof npz, "%s.int8io.npz", p->name);
    g->frames = denoise_npz_load(dir, npz, "frames", "<i4", sizeof(int), &g->calls);
    if (!g->frames)
        return 2;
    for (i = 0; i < p->num_inputs + p->num_outputs; i++) {
        const denoise_gated_tensor *t = &denoise_gated_tensors[i < p->num_inputs ? p->inputs + i : p->outputs + i - p->num_inputs];
        g->values[i] = denoise_npz_load(dir, npz, t->name, "|i1", 1, &n);
        if (!g->values[i])
            return 2;
        if (n != g->calls * t->size)
            return fail("golden calls of other sizes than denoise_config.h says (calls of another bundle?)", npz);
    }
    if (dump) {
        snprintf(dump_name, sizeof dump_name, "%s.i8", p->name);
        g->dump = open_dump(dump, dump_name);
        if (!g->dump)
            return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static replay r;
    long n_in, n_out, n_gates, frames, t, i, gate_diffs = 0, missing = 0;
    float *audio, *expected, *y, peak = 0.0f, diff = 0.0f;
    unsigned char *gates, *ran;
    denoise_gated_state *st;
    FILE *dump = NULL;
    int k, passed;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s GOLDEN_DIR [DUMP_DIR]\n", argv[0]);
        return 2;
    }
    audio = denoise_npy_load(argv[1], "audio_in.npy", "<f4", sizeof(float), &n_in);
    expected = denoise_npy_load(argv[1], "audio_out_replay.npy", "<f4", sizeof(float), &n_out);
    gates = denoise_npy_load(argv[1], "gates_int8io.npy", "|u1", 1, &n_gates);
    if (!audio || !expected || !gates)
        return 2;
    frames = n_in / DENOISE_HOP;
    if (n_in % DENOISE_HOP || n_out != n_in || n_gates != frames * DENOISE_NUM_BRANCHES)
        return fail("golden audio and gates of other sizes than denoise_config.h says (vectors of another bundle?)", argv[1]);
    for (k = 0; k < DENOISE_NUM_PARTS; k++)
        if (load_part(&r.parts[k], &denoise_gated_parts[k], argv[1], argc == 3 ? argv[2] : NULL))
            return 2;
    if (argc == 3 && !(dump = open_dump(argv[2], "audio_out.f32")))
        return 2;

    st = denoise_gated_create(stand_in, &r);
    y = calloc((size_t)n_in, sizeof(float)); /* zeros where a failed replay stops */
    ran = calloc((size_t)n_gates, 1);
    if (!st || !y || !ran)
        return fail("out of memory", argv[0]);
    for (t = 0; t < frames && !r.unexpected[0]; t++) {
        r.t = t;
        if (denoise_gated_process_frame(st, y + t * DENOISE_HOP, audio + t * DENOISE_HOP) && !r.unexpected[0])
            return fail("the stand-in failed", argv[1]);
        for (k = 0; k < DENOISE_NUM_BRANCHES; k++) {
            ran[t * DENOISE_NUM_BRANCHES + k] = (unsigned char)denoise_gated_ran(st, k);
            gate_diffs += ran[t * DENOISE_NUM_BRANCHES + k] != (gates[t * DENOISE_NUM_BRANCHES + k] != 0);
        }
    }
    for (i = 0; i < n_in; i++) {
        peak = fmaxf(peak, fabsf(expected[i]));
        diff = fmaxf(diff, fabsf(y[i] - expected[i]));
    }
    if (dump) {
        fwrite(y, sizeof(float), (size_t)n_in, dump);
        fclose(dump);
        if (!(dump = open_dump(argv[2], "gates.u8")))
            return 2;
        fwrite(ran, 1, (size_t)n_gates, dump);
        fclose(dump);
    }

    printf("frames: %ld\n", frames);
    if (r.unexpected[0])
        printf("calls: %s (frame %ld stops the replay)\n", r.unexpected, r.t);
    printf("calls made of the golden ones:");
    for (k = 0; k < DENOISE_NUM_PARTS; k++) {
        printf(" %s %ld of %ld%s", denoise_gated_parts[k].name, r.parts[k].next, r.parts[k].calls, k + 1 < DENOISE_NUM_PARTS ? "," : "\n");
        missing += r.parts[k].calls - r.parts[k].next;
    }
    printf("gates: %ld of %ld differ from gates_int8io\n", gate_diffs, n_gates);
    printf("features and energies: %ld of %ld differ, by at most %ld LSB\n", r.spectral_diffs, r.spectral, r.spectral_max);
    printf("states and requantised inputs: %ld of %ld differ\n", r.other_diffs, r.other);
    printf("audio: max abs difference %.3g (peak %.3g, tolerance %.0e of the peak)\n", diff, peak, DENOISE_AUDIO_TOLERANCE);
    passed = !r.unexpected[0] && missing == 0 && gate_diffs == 0 && r.spectral_max <= 1
             && (double)r.spectral_diffs <= DENOISE_FEATURE_FLIPS * (double)r.spectral && r.other_diffs == 0 && diff <= DENOISE_AUDIO_TOLERANCE * peak;
    printf("%s\n", passed ? "passed" : "FAILED");
    for (k = 0; k < DENOISE_NUM_PARTS; k++) {
        golden_part *g = &r.parts[k];
        for (i = 0; i < denoise_gated_parts[k].num_inputs + denoise_gated_parts[k].num_outputs; i++)
            free(g->values[i]);
        free(g->frames);
        if (g->dump)
            fclose(g->dump);
    }
    denoise_gated_destroy(st);
    free(y);
    free(ran);
    free(audio);
    free(expected);
    free(gates);
    return passed ? 0 : 1;
}
