/* A model of a given shape with random (seed-initialised) weights, for
   measuring memory and speed at a published model's size without its
   weights.  cc -O2 -fopenmp tools/random_model.c -o build/random_model -lm
   build/random_model OUT D_MODEL N_LAYER [rmsnorm] [untied]
   (OUT ending in .safetensors: safetensors with mamba_ssm's names, else a
   checkpoint; d_state 16, d_conv 4, expand 2, dt_rank ceil(d_model/16)). */
#define MAMBABYTE_IMPLEMENTATION
#include "../mambabyte.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    mb_config c = mb_config_default();
    mb_model *m;
    mb_status st;
    size_t n;
    int i;
    if (argc < 4) { fprintf(stderr, "usage: %s OUT D_MODEL N_LAYER [rmsnorm] [untied]\n", argv[0]); return 2; }
    c.d_model = atoi(argv[2]);
    c.n_layer = atoi(argv[3]);
    c.dt_rank = 0; /* ceil(d_model / 16), as mamba_ssm's "auto" */
    for (i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "rmsnorm")) c.norm = MB_NORM_RMSNORM;
        else if (!strcmp(argv[i], "untied")) c.untied_head = 1;
        else { fprintf(stderr, "%s: unknown option %s\n", argv[0], argv[i]); return 2; }
    }
    if ((st = mb_model_create(&m, &c, 1)) != MB_STATUS_OK) { fprintf(stderr, "%s\n", mb_last_error()); return 1; }
    n = strlen(argv[1]);
    st = n > 12 && !strcmp(argv[1] + n - 12, ".safetensors") ? mb_model_save_safetensors(m, argv[1]) : mb_model_save(m, argv[1]);
    if (st != MB_STATUS_OK) fprintf(stderr, "%s\n", mb_last_error());
    else printf("%s: d_model %d, n_layer %d, %lld parameters\n", argv[1], c.d_model, c.n_layer, (long long)m->num_params);
    mb_model_free(m);
    return st == MB_STATUS_OK ? 0 : 1;
}
