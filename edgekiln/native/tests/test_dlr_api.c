/* C API tests of libedgekiln, in C: the DLR calls an application makes, and their errors.
 *
 *   test_dlr_api run ARTIFACT INPUT.raw OUTPUT.raw   create, set input, run, get output, delete
 *   test_dlr_api errors ARTIFACT                     every misuse returns -1 with a message
 *   test_dlr_api refuse ARTIFACT TEXT                CreateDLRModel fails, its message holds TEXT
 *
 * INPUT.raw/OUTPUT.raw hold the first input/output's bytes. Exit status 0 when every check
 * passed; each failed check prints one line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgekiln/dlr.h"

static int failures = 0;

#define CHECK(cond, what)                                          \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "FAILED: %s (%s)\n", what, DLRGetLastError()); \
      failures++;                                                  \
    }                                                              \
  } while (0)

/* The call failed with -1 and left a non-empty message. */
#define REFUSED(call, what)                                       \
  do {                                                            \
    int rc_ = (call);                                             \
    CHECK(rc_ == -1 && DLRGetLastError()[0] != '\0', what);       \
    if (rc_ == -1) printf("%s: %s\n", what, DLRGetLastError());   \
  } while (0)

static long read_file(const char* path, void* buf, long size) {
  FILE* f = fopen(path, "rb");
  long n;
  if (!f) return -1;
  n = (long)fread(buf, 1, (size_t)size, f);
  fclose(f);
  return n;
}

static int run(const char* artifact, const char* input_path, const char* output_path) {
  DLRModelHandle model = NULL;
  int num_inputs = 0, num_outputs = 0, dim = 0, out_dim = 0;
  int64_t size = 0, out_size = 0, shape[8], out_shape[8];
  const char *name = NULL, *type = NULL, *backend = NULL;
  void *input, *output;
  FILE* f;
  CHECK(CreateDLRModel(&model, artifact, 1, 0) == 0, "CreateDLRModel");
  if (failures) return 1;
  CHECK(GetDLRNumInputs(&model, &num_inputs) == 0 && num_inputs >= 1, "GetDLRNumInputs");
  CHECK(GetDLRNumOutputs(&model, &num_outputs) == 0 && num_outputs >= 1, "GetDLRNumOutputs");
  CHECK(GetDLRInputName(&model, 0, &name) == 0 && name && name[0], "GetDLRInputName");
  CHECK(GetDLRInputType(&model, 0, &type) == 0 && strcmp(type, "float32") == 0, "GetDLRInputType");
  CHECK(GetDLRBackend(&model, &backend) == 0 && strcmp(backend, "relax") == 0, "GetDLRBackend");
  CHECK(GetDLRInputSizeDim(&model, 0, &size, &dim) == 0 && dim <= 8, "GetDLRInputSizeDim");
  CHECK(GetDLRInputShape(&model, 0, shape) == 0, "GetDLRInputShape");
  input = malloc((size_t)size * 4);
  CHECK(read_file(input_path, input, size * 4) == size * 4, "read INPUT.raw of the input's size");
  CHECK(SetDLRInput(&model, name, shape, input, dim) == 0, "SetDLRInput");
  CHECK(RunDLRModel(&model) == 0, "RunDLRModel");
  CHECK(GetDLROutputSizeDim(&model, 0, &out_size, &out_dim) == 0 && out_dim <= 8, "GetDLROutputSizeDim");
  CHECK(GetDLROutputShape(&model, 0, out_shape) == 0, "GetDLROutputShape");
  output = malloc((size_t)out_size * 4);
  CHECK(GetDLROutput(&model, 0, output) == 0, "GetDLROutput");
  f = fopen(output_path, "wb");
  CHECK(f && fwrite(output, 4, (size_t)out_size, f) == (size_t)out_size, "write OUTPUT.raw");
  if (f) fclose(f);
  CHECK(DeleteDLRModel(&model) == 0 && model == NULL, "DeleteDLRModel");
  free(input);
  free(output);
  return failures ? 1 : 0;
}

static int errors(const char* artifact) {
  DLRModelHandle model = NULL, null_model = NULL;
  int64_t shape[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  int64_t size = 0;
  int dim = 0;
  const char *name = NULL, *out = NULL;
  float* input;
  float output[4];
  REFUSED(CreateDLRModel(&model, artifact, 2, 0), "a CUDA device");
  CHECK(model == NULL, "the handle stays NULL after a failed create");
  CHECK(CreateDLRModel(&model, artifact, 1, 0) == 0, "CreateDLRModel");
  if (failures) return 1;
  CHECK(GetDLRInputName(&model, 0, &name) == 0, "GetDLRInputName");
  CHECK(GetDLRInputSizeDim(&model, 0, &size, &dim) == 0, "GetDLRInputSizeDim");
  CHECK(GetDLRInputShape(&model, 0, shape) == 0, "GetDLRInputShape");
  input = (float*)calloc((size_t)size, sizeof(float));
  REFUSED(GetDLROutput(&model, 0, output), "an output before the first run");
  REFUSED(SetDLRInput(&model, "no_such_input", shape, input, dim), "a wrong input name");
  shape[dim - 1] += 1;
  REFUSED(SetDLRInput(&model, name, shape, input, dim), "a wrong input size");
  shape[dim - 1] -= 1;
  REFUSED(SetDLRInput(&model, name, shape, input, dim - 1), "a wrong number of dimensions");
  REFUSED(GetDLRInputName(&model, 99, &out), "an input index out of range");
  REFUSED(GetDLROutputShape(&model, -1, shape), "an output index out of range");
  REFUSED(RunDLRModel(&null_model), "a NULL handle");
  REFUSED(SetDLRNumThreads(&model, 0), "zero threads");
  CHECK(SetDLRInput(&model, name, shape, input, dim) == 0, "SetDLRInput after errors");
  CHECK(RunDLRModel(&model) == 0, "RunDLRModel after errors");
  CHECK(DeleteDLRModel(&model) == 0, "DeleteDLRModel");
  REFUSED(DeleteDLRModel(&model), "a deleted handle");
  free(input);
  return failures ? 1 : 0;
}

static int refuse(const char* artifact, const char* text) {
  DLRModelHandle model = NULL;
  int rc = CreateDLRModel(&model, artifact, 1, 0);
  printf("%s\n", DLRGetLastError());
  CHECK(rc == -1 && model == NULL, "CreateDLRModel refuses the artifact");
  CHECK(strstr(DLRGetLastError(), text) != NULL, "the message names the reason");
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc == 5 && strcmp(argv[1], "run") == 0) return run(argv[2], argv[3], argv[4]);
  if (argc == 3 && strcmp(argv[1], "errors") == 0) return errors(argv[2]);
  if (argc == 4 && strcmp(argv[1], "refuse") == 0) return refuse(argv[2], argv[3]);
  fprintf(stderr, "usage: test_dlr_api run ARTIFACT IN OUT | errors ARTIFACT | refuse ARTIFACT TEXT\n");
  return 2;
}
