/* A DLR application: classify a raw float32 tensor with any DLR-compatible runtime.
 * Build: CC -I<runtime>/include classify.c -L<runtime>/lib -ledgekiln -o classify
 * Run:   ./classify ARTIFACT INPUT.raw   (prints the top-1 class index and its logit) */
#include <edgekiln/dlr.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  DLRModelHandle model = NULL;
  int64_t in_size = 0, out_size = 0, shape[8];
  int in_dim = 0, out_dim = 0, best = 0;
  const char* name = NULL;
  if (argc != 3 || CreateDLRModel(&model, argv[1], 1, 0) != 0) {
    fprintf(stderr, "error: %s\n", argc == 3 ? DLRGetLastError() : "usage: classify ARTIFACT INPUT.raw");
    return 1;
  }
  GetDLRInputName(&model, 0, &name);
  GetDLRInputSizeDim(&model, 0, &in_size, &in_dim);
  GetDLRInputShape(&model, 0, shape);
  GetDLROutputSizeDim(&model, 0, &out_size, &out_dim);
  float* input = (float*)malloc(sizeof(float) * in_size);
  float* output = (float*)malloc(sizeof(float) * out_size);
  FILE* f = fopen(argv[2], "rb");
  if (!f || fread(input, sizeof(float), in_size, f) != (size_t)in_size) return fprintf(stderr, "bad input\n"), 1;
  if (SetDLRInput(&model, name, shape, input, in_dim) || RunDLRModel(&model) || GetDLROutput(&model, 0, output))
    return fprintf(stderr, "error: %s\n", DLRGetLastError()), 1;
  for (int i = 1; i < out_size; ++i) best = output[i] > output[best] ? i : best;
  printf("top-1: %d (logit %.6f)\n", best, output[best]);
  return DeleteDLRModel(&model);
}
