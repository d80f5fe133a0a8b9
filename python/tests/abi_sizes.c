/* abi_sizes.c - prints the C layout of every struct that the Python
   bindings (python/mambabyte/_lib.py) mirror with ctypes, one line per
   struct: "name size field:offset field:offset ...".  The test
   test_abi.py compares it with ctypes' layout, so a header change that
   moves a field cannot silently break the bindings.  Built by
   `make build/abi_sizes` (declarations only: no implementation). */
#include <stddef.h>
#include <stdio.h>
#include "../../mambabyte.h"

#define BEGIN(T) printf("%s %zu", #T, sizeof(T)); { typedef T mbt_abi_t;
#define F(f) printf(" %s:%zu", #f, offsetof(mbt_abi_t, f));
#define END printf("\n"); }
#define SETTING(ID, f, ...) F(f)

int main(void) {
    BEGIN(mb_config) F(vocab_size) F(d_model) F(n_layer) F(d_state) F(d_conv) F(expand) F(dt_rank) F(norm) F(untied_head) END
    BEGIN(mb_tensor_info) F(name) F(offset) F(numel) F(ndim) F(shape) F(weight_decay) END
    BEGIN(mb_train_settings) MB_TRAIN_SETTINGS(SETTING) END
    BEGIN(mb_train_state) F(step) F(data_rng) F(data_pos) F(elapsed_s) F(ranks) F(adam_m) F(adam_v) F(settings) F(carry) END
    BEGIN(mb_batcher) F(data) F(size) F(rng) F(pos) F(sequential) END
    BEGIN(mb_step_result) F(loss) F(grad_norm) F(lr) F(applied) END
    BEGIN(mb_train_backend) F(name) F(impl) F(step) F(sync) F(release) F(last_error) END
    BEGIN(mb_trainer) F(model) F(st) F(batcher) F(inputs) F(targets) F(backend) F(comm) F(grad_acc) F(comm_s) F(inject_nonfinite_step)
        F(inject_nonfinite_from) F(carry_mb) END
    BEGIN(mb_train_progress) F(step) F(steps) F(loss) F(lr) F(grad_norm) F(tokens_per_s) F(elapsed_s) F(eta_s)
        F(progress) F(by_time) F(applied) F(nonfinite_run) F(saves) END
    BEGIN(mb_train_options) F(out) F(stop_at) F(callback) F(user) END
    BEGIN(mb_train_report) F(outcome) F(steps_run) F(elapsed_s) F(tokens_per_s) F(last_loss) F(saved) F(comm_s) F(tokens) END
    BEGIN(mb_train_field_info) F(flag) F(key) F(kind) F(lo) F(hi) F(help) F(offset) END
    BEGIN(mb_mapped_file) F(data) F(size) F(map_base) F(map_len) END
    BEGIN(mb_dataset) F(train_file) F(eval_file) F(train) F(eval) F(train_size) F(eval_size) F(eval_is_tail)
        F(train_path) F(eval_path) END
    BEGIN(mb_eval_result) F(chars) F(chars_correct) F(bytes) F(bytes_correct) F(nll_bits) END
    BEGIN(mb_char_score) F(bytes) F(len) F(logp) END
    BEGIN(mb_spec_options) F(draft) F(draft_len) F(fixed) F(lookup_min) F(rounds) F(drafted) F(accepted) END
    BEGIN(mb_eval_exact_result) F(base) F(exact_correct) F(exact_multibyte) F(exact_multibyte_correct) F(search_steps) END
    printf("enum %zu\n", sizeof(mb_train_outcome));
    printf("MB_FIELD_COUNT %d\n", (int)MB_FIELD_COUNT);
    printf("MB_PRECISION_FP32 %d\nMB_PRECISION_BF16 %d\nMB_PRECISION_INT8 %d\n", MB_PRECISION_FP32, MB_PRECISION_BF16, MB_PRECISION_INT8);
    return 0;
}
