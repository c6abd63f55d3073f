/*
 * libedgekiln: the neo-ai DLR C API over edgekiln artifacts.
 *
 * The functions below keep DLR's names, signatures and error convention, so that an
 * application written against DLR's dlr.h recompiles and links against libedgekiln
 * unchanged: every function returns 0 on success and -1 on failure, and
 * DLRGetLastError() then returns a one-line message for the calling thread.
 *
 * CreateDLRModel() opens an edgekiln TVM artifact, packed (.tar.gz, needs libz.so.1 on the
 * device) or extracted (a directory), verifies every member's size and sha256 against its
 * manifest and checks that the artifact was built for this CPU before it maps any library.
 * Only the CPU (dev_type 1, kDLCPU) is supported.
 */
#ifndef EDGEKILN_DLR_H_
#define EDGEKILN_DLR_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DLR_DLL __attribute__((visibility("default")))
#else
#define DLR_DLL
#endif

/* The DLR release whose C API this header reproduces. */
#define DLR_MAJOR 1
#define DLR_MINOR 10
#define DLR_PATCH 1
#define DLR_VERSION (DLR_MAJOR * 10000 + DLR_MINOR * 100 + DLR_PATCH)
#define DLR_MAKE_VERSION(major, minor, patch) ((major)*10000 + (minor)*100 + patch)

typedef void* DLRModelHandle;

DLR_DLL int CreateDLRModel(DLRModelHandle* handle, const char* model_path, int dev_type, int dev_id);
DLR_DLL int DeleteDLRModel(DLRModelHandle* handle);
DLR_DLL int RunDLRModel(DLRModelHandle* handle);

DLR_DLL int GetDLRNumInputs(DLRModelHandle* handle, int* num_inputs);
DLR_DLL int GetDLRNumWeights(DLRModelHandle* handle, int* num_weights);
DLR_DLL int GetDLRInputName(DLRModelHandle* handle, int index, const char** input_name);
DLR_DLL int GetDLRInputType(DLRModelHandle* handle, int index, const char** input_type);
DLR_DLL int GetDLRWeightName(DLRModelHandle* handle, int index, const char** weight_name);
DLR_DLL int SetDLRInput(DLRModelHandle* handle, const char* name, const int64_t* shape, const void* input,
                        int dim);
DLR_DLL int GetDLRInput(DLRModelHandle* handle, const char* name, void* input);
DLR_DLL int GetDLRInputShape(DLRModelHandle* handle, int index, int64_t* shape);
DLR_DLL int GetDLRInputSizeDim(DLRModelHandle* handle, int index, int64_t* size, int* dim);

DLR_DLL int GetDLRNumOutputs(DLRModelHandle* handle, int* num_outputs);
DLR_DLL int GetDLROutputShape(DLRModelHandle* handle, int index, int64_t* shape);
DLR_DLL int GetDLROutput(DLRModelHandle* handle, int index, void* out);
DLR_DLL int GetDLROutputPtr(DLRModelHandle* handle, int index, const void** out);
DLR_DLL int GetDLROutputSizeDim(DLRModelHandle* handle, int index, int64_t* size, int* dim);
DLR_DLL int GetDLROutputType(DLRModelHandle* handle, int index, const char** output_type);
DLR_DLL int GetDLROutputName(DLRModelHandle* handle, int index, const char** name);
DLR_DLL int GetDLROutputIndex(DLRModelHandle* handle, const char* name, int* index);

DLR_DLL const char* DLRGetLastError(void);
DLR_DLL int GetDLRBackend(DLRModelHandle* handle, const char** name);
DLR_DLL int GetDLRDeviceType(const char* model_path);
DLR_DLL int GetDLRVersion(const char** out);
DLR_DLL int SetDLRNumThreads(DLRModelHandle* handle, int threads);
DLR_DLL int UseDLRCPUAffinity(DLRModelHandle* handle, int use);

/* edgekiln additions (not in DLR): the artifact's class labels and profile. */
DLR_DLL int EdgekilnGetNumLabels(DLRModelHandle* handle, int* num_labels);
DLR_DLL int EdgekilnGetLabel(DLRModelHandle* handle, int index, const char** label);
DLR_DLL int EdgekilnGetProfile(DLRModelHandle* handle, const char** profile);
/* Verifies an artifact (sizes, sha256, paths, compatibility) without loading it. */
DLR_DLL int EdgekilnVerifyArtifact(const char* model_path);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKILN_DLR_H_ */
