#include "denoise_golden.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *fail(const char *path, const char *what, FILE *f)
{
    fprintf(stderr, "error: %s: %s\n", path, what);
    if (f)
        fclose(f);
    return NULL;
}

static FILE *open_in(const char *dir, const char *name, char *path, size_t len)
{
    FILE *f;

    snprintf(path, len, "%s/%s", dir, name);
    f = fopen(path, "rb");
    if (!f)
        fail(path, "cannot open (is this a bundle's golden folder?)", NULL);
    return f;
}

/* The .npy array that starts at f's position; closes f. */
static void *read_npy(FILE *f, const char *path, const char *descr, size_t item, long *count)
{
    char header[4096], want[32];
    unsigned char pre[10];
    size_t len;
    long n = 1;
    const char *s;
    char *end;
    void *data;

    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1)
        return fail(path, "not a version 1 .npy array", f);
    len = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (len >= sizeof header || fread(header, 1, len, f) != len)
        return fail(path, "truncated .npy header", f);
    header[len] = '\0';
    snprintf(want, sizeof want, "'descr': '%s'", descr);
    s = strstr(header, "'shape': (");
    if (!strstr(header, want) || !strstr(header, "'fortran_order': False") || !s)
        return fail(path, "unexpected dtype or layout", f);
    for (s += 10; *s && *s != ')';) {
        if (*s >= '0' && *s <= '9') {
            n *= strtol(s, &end, 10);
            s = end;
        } else {
            s++;
        }
    }
    data = malloc(n ? (size_t)n * item : 1); /* a branch that never ran has no calls */
    if (!data)
        return fail(path, "out of memory", f);
    if (fread(data, item, (size_t)n, f) != (size_t)n) {
        free(data);
        return fail(path, "truncated data", f);
    }
    fclose(f);
    *count = n;
    return data;
}

void *denoise_npy_load(const char *dir, const char *name, const char *descr, size_t item, long *count)
{
    char path[4096];
    FILE *f = open_in(dir, name, path, sizeof path);

    return f ? read_npy(f, path, descr, item, count) : NULL;
}

static unsigned long le(const unsigned char *p, int bytes)
{
    unsigned long v = 0;

    while (bytes--)
        v = v << 8 | p[bytes];
    return v;
}

void *denoise_npz_load(const char *dir, const char *name, const char *member, const char *descr, size_t item, long *count)
{
    char path[4096], want[512], entry[512];
    unsigned char h[30], extra[256];
    FILE *f = open_in(dir, name, path, sizeof path);

    if (!f)
        return NULL;
    snprintf(want, sizeof want, "%s.npy", member);
    /* The local file headers one after the other, as zipfile writes them for numpy.savez. */
    while (fread(h, 1, 30, f) == 30 && le(h, 4) == 0x04034b50) {
        const unsigned long flags = le(h + 6, 2), method = le(h + 8, 2), nlen = le(h + 26, 2), xlen = le(h + 28, 2);
        unsigned long size = le(h + 18, 4);
        unsigned long i;

        if (nlen >= sizeof entry || xlen > sizeof extra || fread(entry, 1, nlen, f) != nlen || fread(extra, 1, xlen, f) != xlen)
            return fail(path, "truncated .npz archive", f);
        entry[nlen] = '\0';
        if (flags & 8 || method != 0)
            return fail(path, "not an uncompressed numpy.savez archive", f);
        for (i = 0; size == 0xffffffffUL && i + 4 <= xlen; i += 4 + le(extra + i + 2, 2))
            if (le(extra + i, 2) == 1 && le(extra + i + 2, 2) >= 16) /* zip64: uncompressed, then compressed size */
                size = le(extra + i + 12, 8);
        if (size == 0xffffffffUL)
            return fail(path, "truncated .npz archive", f);
        if (strcmp(entry, want) == 0)
            return read_npy(f, path, descr, item, count);
        if (fseek(f, (long)size, SEEK_CUR))
            return fail(path, "truncated .npz archive", f);
    }
    snprintf(entry, sizeof entry, "has no array '%s' (golden calls of another bundle?)", member);
    return fail(path, entry, f);
}

int denoise_golden_calls_load(denoise_golden_calls *g, const char *dir, const char *part, int n, const char *const *names, const int *sizes,
                              const char *dump)
{
    char npz[256], dump_name[256];
    long count;
    int i;

    memset(g, 0, sizeof(*g));
    snprintf(npz, sizeof npz, "%s.int8io.npz", part);
    g->frames = denoise_npz_load(dir, npz, "frames", "<i4", sizeof(int), &g->calls);
    g->values = calloc((size_t)n, sizeof(int8_t *));
    if (!g->frames || !g->values)
        return 2;
    g->tensors = n;
    for (i = 0; i < n; i++) {
        g->values[i] = denoise_npz_load(dir, npz, names[i], "|i1", 1, &count);
        if (!g->values[i])
            return 2;
        if (count != g->calls * sizes[i]) {
            fprintf(stderr, "error: %s/%s: golden calls of other sizes than denoise_config.h says (calls of another bundle?)\n", dir, npz);
            return 2;
        }
    }
    snprintf(dump_name, sizeof dump_name, "%s.i8", part);
    if (dump && !(g->dump = denoise_dump_open(dump, dump_name)))
        return 2;
    return 0;
}

void denoise_golden_calls_free(denoise_golden_calls *g)
{
    int i;

    for (i = 0; g->values && i < g->tensors; i++)
        free(g->values[i]);
    free(g->values);
    free(g->frames);
    if (g->dump)
        fclose(g->dump);
}

void denoise_compare(const int8_t *got, const int8_t *want, int size, long *count, long *diffs, long *max)
{
    int j;

    for (j = 0; j < size; j++) {
        const long d = labs((long)got[j] - want[j]);
        *diffs += d != 0;
        if (d > *max)
            *max = d;
    }
    *count += size;
}

float denoise_max_diff(const float *y, const float *want, long n, float *peak)
{
    float diff = 0.0f;
    long i;

    *peak = 0.0f;
    for (i = 0; i < n; i++) {
        *peak = fmaxf(*peak, fabsf(want[i]));
        diff = fmaxf(diff, fabsf(y[i] - want[i]));
    }
    return diff;
}

FILE *denoise_dump_open(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        fail(path, "cannot write", NULL);
    return f;
}
