/* export.c - `mambabyte export`: a model (this project's checkpoint or a
   safetensors file) written as safetensors with mamba_ssm's names, or as
   this project's checkpoint.  Included by main.c after the header's
   implementation. */

#include "cli.h"

static const char *EXPORT_USAGE = "mambabyte export --model FILE --format safetensors|mambabyte --out FILE";

static int mb_cli_export(int argc, char **argv) {
    static const char *const formats[] = {"safetensors", "mambabyte", NULL};
    flag flags[] = {
        {"model", F_STR, 0, 0, "model to read: a checkpoint or a .safetensors file (required)", 0, 0, 0},
        {"format", F_STR, 0, 0, "safetensors (mamba_ssm's names) or mambabyte (this project's checkpoint) (required)", 0, 0, 0},
        {"out", F_STR, 0, 0, "file to write, atomically (required)", 0, 0, 0},
        FLAG_END};
    mb_model *m = NULL;
    const mb_config *c;
    mb_status s;
    if (parse_flags("export", flags, argc - 1, argv + 1, EXPORT_USAGE)) return 2;
    if (!flag_given(flags, "model") || !flag_given(flags, "format") || !flag_given(flags, "out")) {
        fprintf(stderr, "mambabyte export: --model, --format and --out are required\nusage: %s\n", EXPORT_USAGE);
        return 2;
    }
    if (!flag_choice("export", flags, "format", formats, EXPORT_USAGE)) return 2;
    if (mb_model_load(&m, flag_str(flags, "model", "")) != MB_STATUS_OK) { fprintf(stderr, "mambabyte export: %s\n", mb_last_error()); return 1; }
    s = !strcmp(flag_str(flags, "format", ""), "safetensors") ? mb_model_save_safetensors(m, flag_str(flags, "out", ""))
                                                              : mb_model_save(m, flag_str(flags, "out", ""));
    if (s == MB_STATUS_OK && !strcmp(flag_str(flags, "format", ""), "safetensors")) {
        /* mamba_ssm reads its config from config.json beside the weights */
        const char *out = flag_str(flags, "out", ""), *slash = strrchr(out, '/');
        char cpath[4096];
        if (strlen(out) + 16 > sizeof cpath) {
            fprintf(stderr, "mambabyte export: --out path too long to write config.json beside it\n");
            mb_model_free(m);
            return 1;
        }
        if (slash) snprintf(cpath, sizeof cpath, "%.*s/config.json", (int)(slash - out), out);
        else snprintf(cpath, sizeof cpath, "config.json");
        s = mb_model_save_config_json(m, cpath);
    }
    if (s != MB_STATUS_OK) { fprintf(stderr, "mambabyte export: %s\n", mb_last_error()); mb_model_free(m); return 1; }
    c = mb_model_config(m);
    printf("wrote %s: d_model %d, %d layers, d_state %d, d_conv %d, expand %d, dt_rank %d, %s, %s head, %lld parameters\n",
           flag_str(flags, "out", ""), c->d_model, c->n_layer, c->d_state, c->d_conv, c->expand, c->dt_rank,
           c->norm == MB_NORM_RMSNORM ? "RMSNorm" : "LayerNorm", c->untied_head ? "untied" : "tied", (long long)mb_model_num_params(m));
    mb_model_free(m);
    return 0;
}
