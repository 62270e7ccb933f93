/*
 * Fine-tunes a plan from C: trains a few steps on a fixed synthetic batch and checks that
 * the loss falls, reads a weight and writes it back, saves a checkpoint and opens it again,
 * exports ONNX, and checks that a closed handle is refused.
 *
 *   actc compile models/tiny_mlp.onnx --layers all --lr 0.1 --momentum 0.9 -o mlp.actc
 *   cc -std=c11 -Icompiler/capi/include compiler/capi/examples/train.c \
 *      -Ltarget/release -lactc -Wl,-rpath,target/release -o train
 *   ./train mlp.actc OUT_DIR
 *
 * Exits 0 when every check passes, else 1 with the reason on stderr.
 */
#include "actc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEPS 20

/* Runs `call`; on an error prints what failed and actc's message, and leaves the function. */
#define CHECK(call)                                                                     \
    do {                                                                                \
        int status_ = (call);                                                           \
        if (status_ != ACTC_OK) {                                                       \
            fprintf(stderr, "%s: error %d: %s\n", #call, status_, actc_last_error());   \
            goto done;                                                                  \
        }                                                                               \
    } while (0)

/* A fixed pseudo-random sequence in [-1, 1): the same batch on every run and machine. */
static float next_value(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

static size_t product(const size_t *dims, size_t rank) {
    size_t n = 1;
    for (size_t i = 0; i < rank; i++) n *= dims[i];
    return n;
}

/* Reads trainable weight 0 and writes the same values back: what an app does to load
 * weights of its own, by ONNX initializer name. */
static int round_trip_a_weight(ActcTrainer trainer) {
    int ok = 0;
    char *name = NULL;
    float *values = NULL, *again = NULL;
    size_t count = 0, needed = 0, len = 0;
    CHECK(actc_trainer_weight_count(trainer, &count));
    if (count == 0) {
        fprintf(stderr, "the plan trains no weight\n");
        goto done;
    }
    CHECK(actc_trainer_weight_name(trainer, 0, NULL, 0, &needed));
    name = malloc(needed);
    if (name == NULL) goto done;
    CHECK(actc_trainer_weight_name(trainer, 0, name, needed, &needed));
    CHECK(actc_trainer_weight_len(trainer, name, &len));
    values = malloc(len * sizeof *values);
    again = malloc(len * sizeof *again);
    if (values == NULL || again == NULL) goto done;
    CHECK(actc_trainer_get_weight(trainer, name, values, len));
    CHECK(actc_trainer_set_weight(trainer, name, values, len));
    CHECK(actc_trainer_get_weight(trainer, name, again, len));
    if (memcmp(values, again, len * sizeof *values) != 0) {
        fprintf(stderr, "weight '%s' changed on its way back\n", name);
        goto done;
    }
    printf("weight 0 of %zu, '%s' (%zu values), read and written back\n", count, name, len);
    ok = 1;
done:
    free(name);
    free(values);
    free(again);
    return ok;
}

/* Trains `trainer` and runs every check but the closed-handle one; 1 when all pass. */
static int train(ActcTrainer trainer, const char *out_dir) {
    int ok = 0;
    float *inputs = NULL, *scores = NULL;
    int64_t *labels = NULL;
    ActcTrainer reopened = 0;
    size_t in_dims[8], out_dims[8], in_rank = 0, out_rank = 0;
    bool classes = false;
    char path[4096];

    CHECK(actc_trainer_input_shape(trainer, in_dims, 8, &in_rank));
    CHECK(actc_trainer_output_shape(trainer, out_dims, 8, &out_rank));
    CHECK(actc_trainer_takes_classes(trainer, &classes));
    if (!classes) {
        fprintf(stderr, "this example trains class labels; the plan was compiled with --loss mse\n");
        goto done;
    }
    size_t batch = in_dims[0], n_in = product(in_dims, in_rank), n_out = product(out_dims, out_rank);
    size_t per_sample = n_in / batch, n_classes = n_out / batch;

    /* Each label is the largest of the sample's first values: a rule the model can learn. */
    inputs = malloc(n_in * sizeof *inputs);
    labels = malloc(batch * sizeof *labels);
    scores = malloc(n_out * sizeof *scores);
    if (inputs == NULL || labels == NULL || scores == NULL) goto done;
    uint32_t state = 2024;
    for (size_t i = 0; i < n_in; i++) inputs[i] = next_value(&state);
    size_t span = per_sample < n_classes ? per_sample : n_classes;
    for (size_t s = 0; s < batch; s++) {
        const float *x = inputs + s * per_sample;
        size_t best = 0;
        for (size_t j = 1; j < span; j++)
            if (x[j] > x[best]) best = j;
        labels[s] = (int64_t)best;
    }

    float first = 0, loss = 0, accuracy = 0;
    for (int step = 0; step < STEPS; step++) {
        CHECK(actc_trainer_train_step(trainer, inputs, n_in, labels, batch, &loss));
        if (step == 0) first = loss;
    }
    printf("loss %.4f -> %.4f over %d steps\n", first, loss, STEPS);
    if (!(loss < first)) {
        fprintf(stderr, "the loss did not fall: %.4f -> %.4f\n", first, loss);
        goto done;
    }
    CHECK(actc_trainer_eval_step(trainer, inputs, n_in, labels, batch, &loss, &accuracy));
    CHECK(actc_trainer_predict(trainer, inputs, n_in, scores, n_out));
    printf("eval loss %.4f, accuracy %.2f\n", loss, accuracy);

    if (!round_trip_a_weight(trainer)) goto done;

    snprintf(path, sizeof path, "%s/trained.actc", out_dir);
    CHECK(actc_trainer_save(trainer, path));
    CHECK(actc_trainer_open(path, &reopened));
    uint64_t updates = 0;
    CHECK(actc_trainer_updates(reopened, &updates));
    if (updates != STEPS) {
        fprintf(stderr, "the checkpoint has %llu updates, not %d\n", (unsigned long long)updates,
                STEPS);
        goto done;
    }
    printf("saved %s (%llu updates)\n", path, (unsigned long long)updates);
    snprintf(path, sizeof path, "%s/trained.onnx", out_dir);
    CHECK(actc_trainer_export(trainer, path));
    ok = 1;
done:
    actc_trainer_close(reopened);
    free(inputs);
    free(labels);
    free(scores);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PLAN.actc [OUT_DIR]\n", argv[0]);
        return 2;
    }
    printf("actc %s\n", actc_version());
    int ok = 0;
    ActcTrainer trainer = 0;
    CHECK(actc_set_threads(2));
    CHECK(actc_trainer_open(argv[1], &trainer));
    if (!train(trainer, argc == 3 ? argv[2] : ".")) goto done;

    /* A closed handle is refused, not used: an error code and a message, no crash. */
    CHECK(actc_trainer_close(trainer));
    uint64_t updates = 0;
    int status = actc_trainer_updates(trainer, &updates);
    trainer = 0;
    if (status != ACTC_ERR_HANDLE || strlen(actc_last_error()) == 0) {
        fprintf(stderr, "a closed handle gave status %d, not ACTC_ERR_HANDLE\n", status);
        goto done;
    }
    printf("after close: %s\n", actc_last_error());
    ok = 1;
done:
    actc_trainer_close(trainer);
    return ok ? 0 : 1;
}
