/* mbfx.h - reader for the "MBFX" fixture container written by tools/mbfix.py.
   Little-endian: uint32 magic 0x5846424D, version 1, count; per entry:
   uint32 name_len, name, uint32 dtype (0 f32, 1 i32, 2 f64), uint32 ndim,
   uint32 dims[ndim], data.  The whole file is read into memory once. */
#ifndef MBFX_H
#define MBFX_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[128];
    uint32_t dtype, ndim, dims[8];
    int64_t numel;
    const void *data;
} mbfx_entry;

typedef struct {
    unsigned char *buf;
    int n;
    mbfx_entry *e;
} mbfx;

static inline uint32_t mbfx__u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Returns 0 on success; on failure prints why and returns -1. */
static inline int mbfx_load(mbfx *f, const char *path) {
    FILE *fp = fopen(path, "rb");
    long size;
    size_t pos = 12;
    uint32_t i, count;
    memset(f, 0, sizeof *f);
    if (!fp) { fprintf(stderr, "mbfx: cannot open %s\n", path); return -1; }
    fseek(fp, 0, SEEK_END);
    size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->buf = (unsigned char *)malloc((size_t)size + 1);
    if (!f->buf || fread(f->buf, 1, (size_t)size, fp) != (size_t)size) { fclose(fp); fprintf(stderr, "mbfx: read %s failed\n", path); return -1; }
    fclose(fp);
    if (size < 12 || mbfx__u32(f->buf) != 0x5846424Du || mbfx__u32(f->buf + 4) != 1u) { fprintf(stderr, "mbfx: %s: bad header\n", path); return -1; }
    count = mbfx__u32(f->buf + 8);
    f->e = (mbfx_entry *)calloc(count ? count : 1, sizeof(mbfx_entry));
    for (i = 0; i < count; i++) {
        mbfx_entry *e = &f->e[i];
        uint32_t len, d, elsize;
        if (pos + 4 > (size_t)size) goto bad;
        len = mbfx__u32(f->buf + pos); pos += 4;
        if (len >= sizeof e->name || pos + len + 8 > (size_t)size) goto bad;
        memcpy(e->name, f->buf + pos, len); pos += len;
        e->dtype = mbfx__u32(f->buf + pos); pos += 4;
        e->ndim = mbfx__u32(f->buf + pos); pos += 4;
        if (e->ndim > 8 || pos + 4 * e->ndim > (size_t)size) goto bad;
        e->numel = 1;
        for (d = 0; d < e->ndim; d++) { e->dims[d] = mbfx__u32(f->buf + pos); pos += 4; e->numel *= e->dims[d]; }
        elsize = e->dtype == 2 ? 8 : 4;
        if (pos + (size_t)e->numel * elsize > (size_t)size) goto bad;
        /* copied out: entries are not 4-byte aligned inside the file */
        e->data = malloc((size_t)e->numel * elsize + 1);
        memcpy((void *)e->data, f->buf + pos, (size_t)e->numel * elsize);
        pos += (size_t)e->numel * elsize;
        f->n++;
    }
    return 0;
bad:
    fprintf(stderr, "mbfx: %s: truncated or malformed at entry %u\n", path, i);
    return -1;
}

static inline const mbfx_entry *mbfx_get(const mbfx *f, const char *name) {
    int i;
    for (i = 0; i < f->n; i++)
        if (strcmp(f->e[i].name, name) == 0) return &f->e[i];
    return NULL;
}

static inline void mbfx_free(mbfx *f) {
    int i;
    for (i = 0; i < f->n; i++) free((void *)f->e[i].data);
    free(f->buf);
    free(f->e);
    memset(f, 0, sizeof *f);
}
#endif
