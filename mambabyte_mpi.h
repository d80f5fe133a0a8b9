/* mambabyte_mpi.h - data-parallel training over MPI for mambabyte.h: an
   mb_train_comm whose sums and broadcasts are MPI collectives.

   HOW TO USE
     In the file that defines MAMBABYTE_IMPLEMENTATION, after mambabyte.h:
         #define MAMBABYTE_MPI_IMPLEMENTATION
         #include "mambabyte_mpi.h"
     build with mpicc, and:
         mb_mpi_comm c;
         mb_mpi_init(&c, &argc, &argv, deterministic);
         mb_trainer_set_comm(&trainer, &c.comm);     (then mb_train_run as usual)
         ...
         mb_mpi_finalize(&c);
     and start it with `mpirun -np N program ...`.

   WHAT IT GUARANTEES
     Every rank ends each step with the same gradient sum: the sum goes to
     rank 0 and rank 0's result is broadcast, so no rank can round
     differently.  deterministic = 1 adds the ranks' buffers on rank 0 in
     rank order ((g_0 + g_1) + g_2 ...), so N ranks equal, bit for bit, one
     process with grad_accum N (which sums fresh micro-batch gradients in the
     same order).  deterministic = 0 uses MPI_Reduce's own tree (faster for
     many ranks; the order is MPI's, so results agree to float rounding).

   FAILURES
     A rank that fails calls mb_mpi_abort(message): MPI_Abort ends every
     rank at once (no rank waits forever in a collective), after the
     message is printed.  Checkpoints are only written by rank 0 and always
     atomically, so the last one stays intact.

   LICENSE: MIT, as mambabyte.h. */
#ifndef MAMBABYTE_MPI_H
#define MAMBABYTE_MPI_H

#include "mambabyte.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    mb_train_comm comm;        /* pass &comm to mb_trainer_set_comm; comm.deterministic: sums in rank order */
    float *recv;               /* rank 0's receive buffer (deterministic sums) */
    int64_t recv_n;
} mb_mpi_comm;

/* MPI_Init, then fills c for this rank.  Returns MB_STATUS_OK or the MPI error. */
mb_status mb_mpi_init(mb_mpi_comm *c, int *argc, char ***argv, int deterministic);
/* Ends every rank with exit code 1 after printing "rank R: message" to stderr. */
void mb_mpi_abort(const mb_mpi_comm *c, const char *message);
/* 1 when every rank passes ok = 1 (an all-reduce of the flags): lets all
   ranks stop together after a failure that only some of them saw. */
int mb_mpi_all_ok(const mb_mpi_comm *c, int ok);
void mb_mpi_finalize(mb_mpi_comm *c);

#ifdef __cplusplus
}
#endif
#endif /* MAMBABYTE_MPI_H */

#if defined(MAMBABYTE_MPI_IMPLEMENTATION) && !defined(MB__MPI_IMPLEMENTATION_DONE)
#define MB__MPI_IMPLEMENTATION_DONE
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char mb__mpi_error[MPI_MAX_ERROR_STRING + 64];

static const char *mb__mpi_last_error(void) { return mb__mpi_error; }

static mb_status mb__mpi_check(int rc, const char *what) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (rc == MPI_SUCCESS) return MB_STATUS_OK;
    MPI_Error_string(rc, text, &len);
    snprintf(mb__mpi_error, sizeof mb__mpi_error, "%s: %s", what, text);
    return MB_STATUS_IO_ERROR;
}

/* MPI counts are int: large buffers go in pieces. */
#define MB__MPI_PIECE (1 << 28)

static mb_status mb__mpi_sum_floats(void *impl, float *x, int64_t n) {
    mb_mpi_comm *c = (mb_mpi_comm *)impl;
    int64_t off;
    mb_status s = MB_STATUS_OK;
    if (c->comm.size == 1) return MB_STATUS_OK;
    if (c->comm.deterministic && c->comm.rank == 0 && c->recv_n < n) {
        free(c->recv);
        c->recv = (float *)malloc((size_t)n * sizeof(float));
        c->recv_n = c->recv ? n : 0;
        if (!c->recv) { snprintf(mb__mpi_error, sizeof mb__mpi_error, "out of memory for %lld floats", (long long)n); return MB_STATUS_OUT_OF_MEMORY; }
    }
    for (off = 0; off < n && s == MB_STATUS_OK; off += MB__MPI_PIECE) {
        int count = (int)(n - off < MB__MPI_PIECE ? n - off : MB__MPI_PIECE), r, i;
        if (!c->comm.deterministic) {
            s = mb__mpi_check(MPI_Reduce(c->comm.rank == 0 ? MPI_IN_PLACE : x + off, x + off, count, MPI_FLOAT, MPI_SUM, 0,
                                         MPI_COMM_WORLD), "MPI_Reduce");
        } else if (c->comm.rank == 0) { /* ((x_0 + x_1) + x_2) ...: rank order, every element */
            for (r = 1; r < c->comm.size && s == MB_STATUS_OK; r++) {
                s = mb__mpi_check(MPI_Recv(c->recv, count, MPI_FLOAT, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
                for (i = 0; i < count && s == MB_STATUS_OK; i++) x[off + i] += c->recv[i];
            }
        } else {
            s = mb__mpi_check(MPI_Send(x + off, count, MPI_FLOAT, 0, 7, MPI_COMM_WORLD), "MPI_Send");
        }
        if (s == MB_STATUS_OK) s = mb__mpi_check(MPI_Bcast(x + off, count, MPI_FLOAT, 0, MPI_COMM_WORLD), "MPI_Bcast");
    }
    return s;
}

static mb_status mb__mpi_sum_doubles(void *impl, double *x, int n) {
    mb_mpi_comm *c = (mb_mpi_comm *)impl;
    double *all;
    int r, i;
    mb_status s;
    if (c->comm.size == 1) return MB_STATUS_OK;
    all = (double *)malloc(sizeof(double) * (size_t)n * (size_t)c->comm.size);
    if (!all) { snprintf(mb__mpi_error, sizeof mb__mpi_error, "out of memory"); return MB_STATUS_OUT_OF_MEMORY; }
    s = mb__mpi_check(MPI_Gather(x, n, MPI_DOUBLE, all, n, MPI_DOUBLE, 0, MPI_COMM_WORLD), "MPI_Gather");
    if (s == MB_STATUS_OK && c->comm.rank == 0)
        for (i = 0; i < n; i++)
            for (x[i] = all[i], r = 1; r < c->comm.size; r++) x[i] += all[(size_t)r * (size_t)n + (size_t)i];
    free(all);
    return s == MB_STATUS_OK ? mb__mpi_check(MPI_Bcast(x, n, MPI_DOUBLE, 0, MPI_COMM_WORLD), "MPI_Bcast") : s;
}

static mb_status mb__mpi_broadcast(void *impl, double *x, int n) {
    mb_mpi_comm *c = (mb_mpi_comm *)impl;
    if (c->comm.size == 1) return MB_STATUS_OK;
    return mb__mpi_check(MPI_Bcast(x, n, MPI_DOUBLE, 0, MPI_COMM_WORLD), "MPI_Bcast");
}

mb_status mb_mpi_init(mb_mpi_comm *c, int *argc, char ***argv, int deterministic) {
    mb_status s;
    memset(c, 0, sizeof *c);
    if ((s = mb__mpi_check(MPI_Init(argc, argv), "MPI_Init")) != MB_STATUS_OK) return s;
    /* errors come back as codes (reported, then MPI_Abort) instead of MPI's default abort without our message */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->comm.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->comm.size);
    { /* the rank among the processes that share this node's memory (and GPUs) */
        MPI_Comm node;
        c->comm.local_rank = c->comm.rank;
        if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c->comm.rank, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
            MPI_Comm_rank(node, &c->comm.local_rank);
            MPI_Comm_free(&node);
        }
    }
    c->comm.deterministic = deterministic;
    c->comm.impl = c;
    c->comm.sum_floats = mb__mpi_sum_floats;
    c->comm.sum_doubles = mb__mpi_sum_doubles;
    c->comm.broadcast = mb__mpi_broadcast;
    c->comm.last_error = mb__mpi_last_error;
    return MB_STATUS_OK;
}

void mb_mpi_abort(const mb_mpi_comm *c, const char *message) {
    fprintf(stderr, "rank %d: %s\n", c->comm.rank, message);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

int mb_mpi_all_ok(const mb_mpi_comm *c, int ok) {
    int all = 0;
    if (c->comm.size == 1) return ok;
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD) != MPI_SUCCESS) return 0;
    return all;
}

void mb_mpi_finalize(mb_mpi_comm *c) {
    free(c->recv);
    c->recv = NULL;
    MPI_Finalize();
}
#endif /* MAMBABYTE_MPI_IMPLEMENTATION */
