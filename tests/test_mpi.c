/* test_mpi.c - data-parallel training over MPI (./mambabyte_mpi under
   mpirun): N ranks with --deterministic equal one process with --grad-accum
   N bit for bit (with --carry-state too, carried states included); the default reduction agrees to float rounding; resume with
   the same rank count is exact and with another one is refused; a rank that
   fails to start, or dies mid-run, stops the others promptly and the last
   checkpoint stays intact.  Skipped (and counted) where mpicc/mpirun are
   missing.  Included by test.c after test_reliability.c and test_loop.c. */

#define MPI_RUN "timeout 120 " MPI_RUN_BG
#define MPI_RUN_BG "mpirun --allow-run-as-root --oversubscribe -np " /* started with mbt_spawn: signals go to mpirun itself */
#define MPI_FLAGS " --data build/t_text.txt --d-model 16 --n-layer 2 --d-state 4 --batch 2 --ctx 32 --lr 1e-2 --threads 1 " \
                  "--eval-chars 0 --log-every 1"

static int mpi_available(void) {
    return mbt_run("test -x ./mambabyte_mpi && command -v mpirun > /dev/null 2>&1") == 0;
}

/* max |a-b| / max |b| over two checkpoints' parameters (1e30 when either does not load). */
static double mpi_param_rel(const char *a, const char *b) {
    mb_model *ma = NULL, *mb = NULL;
    double worst = 1e30, big = 0;
    if (mb_model_load(&ma, a) == MB_STATUS_OK && mb_model_load(&mb, b) == MB_STATUS_OK &&
        mb_model_num_params(ma) == mb_model_num_params(mb)) {
        int64_t i;
        worst = 0;
        for (i = 0; i < mb_model_num_params(ma); i++) {
            double d = fabs((double)mb_model_params(ma)[i] - mb_model_params(mb)[i]), m = fabs((double)mb_model_params(mb)[i]);
            worst = d > worst ? d : worst;
            big = m > big ? m : big;
        }
        worst /= big > 0 ? big : 1;
    }
    mb_model_free(ma);
    mb_model_free(mb);
    return worst;
}

/* The worst relative difference of the loss column of two CSV logs (1e30 when they differ in length). */
static double mpi_loss_rel(const char *a, const char *b) {
    FILE *fa = fopen(a, "r"), *fb = fopen(b, "r");
    char la[256], lb[256];
    double worst = fa && fb ? 0 : 1e30;
    int rows = 0;
    while (fa && fb && fgets(la, sizeof la, fa)) {
        double x, y;
        long long sa, sb;
        if (!fgets(lb, sizeof lb, fb)) { worst = 1e30; break; }
        if (sscanf(la, "%lld,%lf", &sa, &x) != 2 || sscanf(lb, "%lld,%lf", &sb, &y) != 2) continue;
        if (sa != sb) { worst = 1e30; break; }
        worst = fabs(x - y) / fabs(y) > worst ? fabs(x - y) / fabs(y) : worst;
        rows++;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return rows > 0 ? worst : 1e30;
}

/* ./mambabyte_cuda_mpi (MPI + CUDA + NCCL): built wherever nvcc, NCCL and
   mpicc are; without a GPU every rank falls back to the CPU together and
   equals ./mambabyte_mpi; with 2+ GPUs the gradients are summed by NCCL. */
static void test_mpi_nccl(void) {
    char why[128];
    int rc, gpus;
    if (mbt_run("(command -v nvcc || test -x /usr/local/cuda/bin/nvcc) > /dev/null 2>&1 && "
                "test -f \"$(dirname \"$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)\")/../include/nccl.h\"") != 0) {
        MBT_SKIP("mpi", "NCCL: no nvcc with nccl.h here, so no ./mambabyte_cuda_mpi");
        return;
    }
    MBT_CHECK(mbt_run("test -x ./mambabyte_cuda_mpi") == 0, "make builds ./mambabyte_cuda_mpi where nvcc, NCCL and mpicc are");
    gpus = mbt_run("test $(nvidia-smi -L 2>/dev/null | grep -c '^GPU') -ge 2") == 0 ? 2 : 0;
    if (gpus < 2) { /* no GPUs (CI): the ranks agree to stay on the CPU, and train as ./mambabyte_mpi does */
        rc = mbt_run(MPI_RUN "2 ./mambabyte_cuda_mpi train" MPI_FLAGS " --steps 8 --deterministic --out build/t_nccl_cpu.bin "
                     "> build/t_nccl.out 2>&1");
        MBT_CHECK(rc == 0 && rel_same_run("build/t_nccl_cpu.bin", "build/t_mpi_2.bin", why, sizeof why) &&
                      mbt_file_contains("build/t_nccl.out", "note: training on the CPU"),
                  "mambabyte_cuda_mpi without GPUs: both ranks on the CPU, equal to mambabyte_mpi (exit %d): %s", rc, why);
        rc = mbt_run(MPI_RUN "2 ./mambabyte_cuda_mpi train" MPI_FLAGS " --steps 8 --device cuda --out build/t_nccl_x.bin "
                     "> build/t_nccl.out 2>&1");
        MBT_CHECK(rc != 0 && rc != 124 && mbt_file_contains("build/t_nccl.out", "--device cuda: CUDA"),
                  "mambabyte_cuda_mpi --device cuda without a GPU: a clear error on every rank, no hang (exit %d)", rc);
        MBT_SKIP("mpi", "NCCL: the GPU data-parallel run needs 2+ GPUs (nvidia-smi -L)");
        return;
    }
    /* 2 GPUs: one process at grad-accum 2 against 2 ranks summed by NCCL, 20 steps, both reductions */
    rc = mbt_run("./mambabyte_cuda train" MPI_FLAGS " --device cuda --steps 20 --grad-accum 2 --log build/t_nccl_ref.csv "
                 "--out build/t_nccl_ref.bin > build/t_nccl.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_cuda_mpi train" MPI_FLAGS " --device cuda --steps 20 --log build/t_nccl_fast.csv "
                  "--out build/t_nccl_fast.bin > build/t_nccl.out 2>&1");
    MBT_CHECK(rc == 0 && mpi_loss_rel("build/t_nccl_fast.csv", "build/t_nccl_ref.csv") < 1e-6 &&
                  mbt_run("grep -h 'parameters fnv1a' build/t_nccl.out | awk '{print $NF}' | sort -u | wc -l | grep -qx 1") == 0,
              "2 GPUs (ncclAllReduce) vs one GPU at --grad-accum 2: losses within 1e-6 (worst %.3g), one parameter hash (exit %d)",
              mpi_loss_rel("build/t_nccl_fast.csv", "build/t_nccl_ref.csv"), rc);
    rc = mbt_run(MPI_RUN "2 ./mambabyte_cuda_mpi train" MPI_FLAGS " --device cuda --steps 20 --deterministic --log build/t_nccl_det.csv "
                 "--out build/t_nccl_det.bin > build/t_nccl.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_cuda_mpi train" MPI_FLAGS " --device cuda --steps 20 --deterministic "
                  "--out build/t_nccl_det2.bin > build/t_nccl.out 2>&1");
    MBT_CHECK(rc == 0 && mpi_loss_rel("build/t_nccl_det.csv", "build/t_nccl_ref.csv") < 1e-6 &&
                  rel_same_run("build/t_nccl_det.bin", "build/t_nccl_det2.bin", why, sizeof why),
              "2 GPUs --deterministic: within 1e-6 of one GPU and bit-identical run to run (exit %d): %s", rc, why);
}

static void test_mpi(void) {
    char why[128];
    int rc;
    double t0;
    if (!mpi_available()) {
        MBT_SKIP("mpi", "./mambabyte_mpi or mpirun not found (install libopenmpi-dev openmpi-bin, then make)");
        return;
    }
    write_train_text("build/t_text.txt");
    /* the reference: one process, grad-accum 2 (and 3) */
    rc = mbt_run("./mambabyte train" MPI_FLAGS " --steps 8 --grad-accum 2 --out build/t_mpi_ref2.bin > build/t_mpi.out 2>&1");
    rc |= mbt_run("./mambabyte train" MPI_FLAGS " --steps 8 --grad-accum 3 --out build/t_mpi_ref3.bin > build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 0, "reference runs failed: see build/t_mpi.out");
    rc = mbt_run(MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --deterministic --out build/t_mpi_2.bin > build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 0 && rel_same_run("build/t_mpi_2.bin", "build/t_mpi_ref2.bin", why, sizeof why),
              "2 ranks --deterministic must equal one process with --grad-accum 2 bit for bit (exit %d): %s", rc, why);
    rc = mbt_run(MPI_RUN "3 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --deterministic --out build/t_mpi_3.bin > build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 0 && rel_same_run("build/t_mpi_3.bin", "build/t_mpi_ref3.bin", why, sizeof why),
              "3 ranks --deterministic must equal --grad-accum 3 bit for bit (exit %d): %s", rc, why);
    MBT_CHECK(!mbt_file_contains("build/t_mpi.out", "step 3/8 | loss") || mbt_run("test $(grep -c '^.*step 3/8 | loss' build/t_mpi.out) -eq 1") == 0,
              "rank 0 alone prints");
    /* the default reduction, 20 steps: MPI's order, losses within 1e-6 relative, both ranks hold the same parameters */
    rc = mbt_run("./mambabyte train" MPI_FLAGS " --steps 20 --grad-accum 2 --log build/t_mpi_ref20.csv --out build/t_mpi_ref20.bin "
                 "> build/t_mpi.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 20 --log build/t_mpi_fast.csv --out build/t_mpi_fast.bin "
                  "> build/t_mpi.out 2>&1");
    {
        double worst = mpi_loss_rel("build/t_mpi_fast.csv", "build/t_mpi_ref20.csv");
        MBT_CHECK(rc == 0 && worst < 1e-6, "2 ranks (MPI_Reduce) vs --grad-accum 2 over 20 steps: worst loss rel difference %.3g (exit %d)",
                  worst, rc);
        MBT_CHECK(mpi_param_rel("build/t_mpi_fast.bin", "build/t_mpi_ref20.bin") < 1e-5, "final parameters: max rel difference %.3g",
                  mpi_param_rel("build/t_mpi_fast.bin", "build/t_mpi_ref20.bin"));
        MBT_CHECK(mbt_run("grep -h 'parameters fnv1a' build/t_mpi.out | awk '{print $NF}' | sort -u | wc -l | grep -qx 1") == 0 &&
                      mbt_run("test $(grep -c 'parameters fnv1a' build/t_mpi.out) -eq 2") == 0,
                  "both ranks must end with the same parameter hash (see build/t_mpi.out)");
        MBT_CHECK(mbt_file_contains("build/t_mpi.out", "data-parallel: 2 ranks"), "the run reports its time in the gradient sum");
    }
    /* resume with the same count: exact; with another: refused */
    rc = mbt_run(MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --stop-at 3 --deterministic --out build/t_mpi_half.bin > build/t_mpi.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_mpi train --data build/t_text.txt --resume build/t_mpi_half.bin --out build/t_mpi_half.bin "
                  "--deterministic --threads 1 --eval-chars 0 > build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 0 && rel_same_run("build/t_mpi_half.bin", "build/t_mpi_2.bin", why, sizeof why),
              "3 steps + resume on 2 ranks must equal 8 steps on 2 ranks (exit %d): %s", rc, why);
    rc = mbt_run("./mambabyte train --data build/t_text.txt --resume build/t_mpi_half.bin --out build/t_mpi_x.bin --eval-chars 0 "
                 "> build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 2 && mbt_file_contains("build/t_mpi.out", "trained on 2 ranks: resume it with mpirun -np 2"),
              "resuming a 2-rank checkpoint in one process is refused with the rank count (exit %d)", rc);
    rc = mbt_run(MPI_RUN "3 ./mambabyte_mpi train --data build/t_text.txt --resume build/t_mpi_half.bin --out build/t_mpi_x.bin "
                 "--eval-chars 0 --threads 1 > build/t_mpi.out 2>&1");
    MBT_CHECK(rc != 0 && mbt_file_contains("build/t_mpi.out", "trained on 2 ranks"), "resuming on 3 ranks is refused (exit %d)", rc);
    /* --carry-state: each rank carries its rows of the one process's order; every save holds all of them */
    rc = mbt_run("./mambabyte train" MPI_FLAGS " --steps 8 --grad-accum 2 --carry-state --out build/t_mpi_cref.bin > build/t_mpi.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --carry-state --deterministic --out build/t_mpi_c2.bin "
                  "> build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 0 && rel_same_run("build/t_mpi_c2.bin", "build/t_mpi_cref.bin", why, sizeof why),
              "2 ranks --carry-state --deterministic must equal one process at --grad-accum 2 bit for bit, carried states too (exit %d): %s",
              rc, why);
    rc = mbt_run(MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --stop-at 3 --save-every 2 --carry-state --deterministic "
                 "--out build/t_mpi_chalf.bin > build/t_mpi.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_mpi train --data build/t_text.txt --resume build/t_mpi_chalf.bin --out build/t_mpi_chalf.bin "
                  "--deterministic --threads 1 --eval-chars 0 > build/t_mpi.out 2>&1");
    MBT_CHECK(rc == 0 && rel_same_run("build/t_mpi_chalf.bin", "build/t_mpi_c2.bin", why, sizeof why),
              "--carry-state: 3 steps + resume on 2 ranks must equal 8 steps on 2 ranks (exit %d): %s", rc, why);
    rc = mbt_run(MPI_RUN "3 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --stop-at 3 --carry-state --deterministic "
                 "--out build/t_mpi_chalf.bin > build/t_mpi.out 2>&1");
    rc |= mbt_run(MPI_RUN "2 ./mambabyte_mpi train --data build/t_text.txt --resume build/t_mpi_chalf.bin --out build/t_mpi_x.bin "
                  "--eval-chars 0 --threads 1 > build/t_mpi.out 2>&1") == 0;
    MBT_CHECK(rc == 0 && mbt_file_contains("build/t_mpi.out", "trained on 3 ranks"),
              "a carried-state checkpoint of 3 ranks is refused on 2, with the rank count (exit %d)", rc);
    /* Ctrl-C on mpirun: rank 0 saves and says how to continue, or (when
       mpirun kills the ranks first) the last checkpoint stays intact; never a hang */
    {
        pid_t pid;
        mb_model *m = NULL;
        int saved;
        remove("build/t_mpi_int.bin");
        remove("build/t_mpi_int.out");
        pid = mbt_spawn(MPI_RUN_BG "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 100000 --save-every 10 --out build/t_mpi_int.bin "
                        "> build/t_mpi_int.out 2>&1");
        for (t0 = mb_clock_seconds(); !mbt_file_contains("build/t_mpi_int.out", "step 40/") && mb_clock_seconds() - t0 < 60;)
            mbt_sleep_ms(20);
        kill(pid, SIGINT);
        t0 = mb_clock_seconds();
        rc = loop_wait(pid, 60);
        saved = mbt_file_contains("build/t_mpi_int.out", "to continue: mpirun -np 2 ./mambabyte_mpi train --resume");
        MBT_CHECK(rc != 124 && mb_clock_seconds() - t0 < 30 && mb_model_load(&m, "build/t_mpi_int.bin") == MB_STATUS_OK,
                  "Ctrl-C on mpirun: exit %d after %.1f s, the checkpoint must load: see build/t_mpi_int.out", rc,
                  mb_clock_seconds() - t0);
        printf("mpi: Ctrl-C on mpirun %s\n", saved ? "saved the step it was on and printed the resume command"
                                                  : "ended the ranks before rank 0 could save; the previous checkpoint is intact");
        mb_model_free(m);
        /* SIGUSR1, which mpirun forwards to every rank: a clean stop with a save, and the resume is exact */
        remove("build/t_mpi_int.out");
        pid = mbt_spawn(MPI_RUN_BG "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 300 --deterministic --out build/t_mpi_int.bin "
                        "> build/t_mpi_int.out 2>&1");
        for (t0 = mb_clock_seconds(); !mbt_file_contains("build/t_mpi_int.out", "step 20/") && mb_clock_seconds() - t0 < 60;)
            mbt_sleep_ms(5);
        kill(pid, SIGUSR1);
        rc = loop_wait(pid, 60);
        MBT_CHECK(mbt_file_contains("build/t_mpi_int.out", "to continue: mpirun -np 2 ./mambabyte_mpi train --resume build/t_mpi_int.bin"),
                  "SIGUSR1 to mpirun: rank 0 saves and prints how to continue (exit %d): see build/t_mpi_int.out", rc);
        rc = mbt_run(MPI_RUN "2 ./mambabyte_mpi train --data build/t_text.txt --resume build/t_mpi_int.bin --out build/t_mpi_int.bin "
                     "--deterministic --threads 1 --eval-chars 0 > build/t_mpi.out 2>&1");
        rc |= mbt_run(MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 300 --deterministic --out build/t_mpi_ref300.bin "
                      "> build/t_mpi.out 2>&1");
        MBT_CHECK(rc == 0 && rel_same_run("build/t_mpi_int.bin", "build/t_mpi_ref300.bin", why, sizeof why),
                  "stopped by SIGUSR1 and resumed equals 300 uninterrupted steps on 2 ranks (exit %d): %s", rc, why);
    }
    test_mpi_nccl();
    /* a rank that cannot start: every rank stops, with the reason */
    t0 = mb_clock_seconds();
    rc = mbt_run("MB_TEST_FAIL_RANK=1 " MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 8 --out build/t_mpi_x.bin > build/t_mpi.out 2>&1");
    MBT_CHECK(rc != 0 && rc != 124 && mbt_file_contains("build/t_mpi.out", "MB_TEST_FAIL_RANK") &&
              mbt_file_contains("build/t_mpi.out", "another rank failed to start"),
              "one rank's bad data stops both promptly (exit %d after %.1f s)", rc, mb_clock_seconds() - t0);
    /* a rank that dies mid-run: the job ends, no hang; the checkpoint loads */
    remove("build/t_mpi_kill.bin");
    t0 = mb_clock_seconds();
    rc = mbt_run("MB_TEST_KILL_RANK=1 " MPI_RUN "2 ./mambabyte_mpi train" MPI_FLAGS " --steps 100000 --save-every 5 "
                 "--out build/t_mpi_kill.bin > build/t_mpi.out 2>&1");
    {
        mb_model *m = NULL;
        MBT_CHECK(rc != 0 && rc != 124 && mb_clock_seconds() - t0 < 60, "a killed rank ends the job (exit %d after %.1f s)", rc,
                  mb_clock_seconds() - t0);
        MBT_CHECK(mb_model_load(&m, "build/t_mpi_kill.bin") == MB_STATUS_OK, "the last checkpoint survives a rank's death: %s",
                  mb_last_error());
        mb_model_free(m);
    }
}
