// The DLR C API over the TVM runtime's Relax VM, for edgekiln TVM artifacts on the CPU.
//
// A model is created in three steps, and the first two touch no library: the artifact is
// verified (sizes, sha256, paths), then checked against this device (arch, CPU features,
// glibc); only then is the model library mapped and the VM started, as the Python
// runtime's executors/tvm.py does it.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/tensor.h>

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "artifact.h"
#include "edgekiln/dlr.h"

namespace {

namespace ffi = tvm::ffi;
using edgekiln::ArtifactError;
using edgekiln::TensorSpec;

// DLPack device code and the Relax VM's pooled allocator (tvm/runtime/vm.py).
constexpr int kDLCPUCode = 1;
constexpr int kPooledAllocator = 2;

thread_local std::string last_error;

struct Model {
  edgekiln::OpenedArtifact artifact;
  std::vector<std::string> labels;
  ffi::Optional<ffi::Module> library;  // kept alive: the VM does not own the kernels' code
  ffi::Optional<ffi::Module> vm;
  ffi::Function main;
  std::vector<tvm::runtime::Tensor> inputs;
  std::vector<tvm::runtime::Tensor> outputs;

  ~Model() {
    outputs.clear();
    inputs.clear();
    main = ffi::Function();
    vm = std::nullopt;
    library = std::nullopt;
    if (artifact.temporary) edgekiln::RemoveTree(artifact.root);
  }
};

DLDataType ToDLType(const std::string& dtype) {
  if (dtype == "float32") return DLDataType{kDLFloat, 32, 1};
  if (dtype == "float16") return DLDataType{kDLFloat, 16, 1};
  if (dtype == "int8") return DLDataType{kDLInt, 8, 1};
  if (dtype == "uint8") return DLDataType{kDLUInt, 8, 1};
  if (dtype == "int64") return DLDataType{kDLInt, 64, 1};
  return DLDataType{kDLInt, 32, 1};
}

[[noreturn]] void Fail(const std::string& message) { throw ArtifactError(message); }

// Runs ``body``; turns any exception into -1 and the thread's last error.
template <typename F>
int Guard(F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    std::string what = e.what();
    last_error = what.substr(0, what.find('\n'));
  } catch (...) {
    last_error = "unknown error";
  }
  return -1;
}

Model* Get(DLRModelHandle* handle) {
  if (!handle || !*handle) Fail("the model handle is null (CreateDLRModel failed or the model was deleted)");
  return static_cast<Model*>(*handle);
}

template <typename T>
const T& At(const std::vector<T>& items, int index, const char* what) {
  if (index < 0 || static_cast<size_t>(index) >= items.size()) {
    Fail(std::string(what) + " index " + std::to_string(index) + " is out of range (the model has " +
         std::to_string(items.size()) + ")");
  }
  return items[static_cast<size_t>(index)];
}

// The model library embeds the VM executable (weights included) as one blob, which TVM
// copies out while loading. Its pages stay resident afterwards although nothing reads them
// again: hand them back (they are clean file pages; a later read would fault them in).
void ReleaseExecutableBlob(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (!handle) return;
  const char* blob = static_cast<const char*>(dlsym(handle, "__tvm_ffi__library_bin"));
  if (blob) {
    uint64_t nbytes = 0;
    for (int i = 0; i < 8; ++i) nbytes |= static_cast<uint64_t>(static_cast<unsigned char>(blob[i])) << (8 * i);
    uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    uintptr_t begin = (reinterpret_cast<uintptr_t>(blob) + page - 1) & ~(page - 1);
    uintptr_t end = (reinterpret_cast<uintptr_t>(blob) + 8 + nbytes) & ~(page - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
  dlclose(handle);
}

void Load(Model* model) {
  const edgekiln::Manifest& m = model->artifact.manifest;
  const edgekiln::FileEntry* library = m.file("model-library");
  if (!library) Fail("the artifact has no model library");
  try {
    model->library = ffi::Module::LoadFromFile(model->artifact.root + "/" + library->path);
    ffi::Optional<ffi::Function> load = model->library.value()->GetFunction("vm_load_executable");
    if (!load) Fail("the model library holds no Relax VM executable");
    ffi::Module vm = (*load)().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(kDLCPUCode, 0, kPooledAllocator);
    model->main = vm->GetFunction("main").value();
    model->vm = vm;
    ReleaseExecutableBlob(model->artifact.root + "/" + library->path);
  } catch (const ffi::Error& e) {
    Fail("cannot load the model library: " + std::string(e.message()));
  }
  // The VM's kernels use 64-byte aligned vector loads: inputs live in tensors TVM allocated.
  DLDevice cpu{kDLCPU, 0};
  for (const TensorSpec& spec : m.inputs) {
    model->inputs.push_back(tvm::runtime::Tensor::Empty(ffi::Shape(spec.shape), ToDLType(spec.dtype), cpu));
    std::memset(model->inputs.back()->data, 0, spec.elements() * spec.itemsize());
  }
}

const TensorSpec& Output(Model* model, int index) { return At(model->artifact.manifest.outputs, index, "output"); }

}  // namespace

extern "C" {

int CreateDLRModel(DLRModelHandle* handle, const char* model_path, int dev_type, int dev_id) {
  return Guard([&] {
    if (!handle || !model_path) Fail("CreateDLRModel needs a handle pointer and a model path");
    *handle = nullptr;
    if (dev_type != kDLCPUCode || dev_id != 0) {
      Fail("the native runtime runs on the CPU only (dev_type 1, dev_id 0); got dev_type " + std::to_string(dev_type));
    }
    auto model = std::make_unique<Model>();
    model->artifact = edgekiln::OpenArtifact(model_path);
    std::vector<std::string> problems = edgekiln::CompatibilityProblems(model->artifact.manifest);
    if (!problems.empty()) {
      std::string text = "artifact for profile " + model->artifact.manifest.profile + " cannot run here: ";
      for (size_t i = 0; i < problems.size(); ++i) text += (i ? "; " : "") + problems[i];
      Fail(text);
    }
    if (!model->artifact.manifest.labels.empty()) {
      model->labels = edgekiln::ReadLabels(model->artifact.root, model->artifact.manifest.labels);
    }
    Load(model.get());
    *handle = model.release();
  });
}

int DeleteDLRModel(DLRModelHandle* handle) {
  return Guard([&] {
    delete Get(handle);
    *handle = nullptr;
  });
}

int RunDLRModel(DLRModelHandle* handle) {
  return Guard([&] {
    Model* model = Get(handle);
    std::vector<ffi::AnyView> args(model->inputs.begin(), model->inputs.end());
    ffi::Any result;
    try {
      model->main.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    } catch (const ffi::Error& e) {
      Fail("running the model failed: " + std::string(e.message()));
    }
    model->outputs.clear();
    if (auto single = result.as<tvm::runtime::Tensor>()) {
      model->outputs.push_back(*single);
    } else {
      for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) {
        model->outputs.push_back(item.cast<tvm::runtime::Tensor>());
      }
    }
    if (model->outputs.size() != model->artifact.manifest.outputs.size()) {
      Fail("the model returned " + std::to_string(model->outputs.size()) + " outputs; the manifest lists " +
           std::to_string(model->artifact.manifest.outputs.size()));
    }
  });
}

int GetDLRNumInputs(DLRModelHandle* handle, int* num_inputs) {
  return Guard([&] { *num_inputs = static_cast<int>(Get(handle)->artifact.manifest.inputs.size()); });
}

int GetDLRNumWeights(DLRModelHandle* handle, int* num_weights) {
  // The weights are linked into the model library; none is set by name.
  return Guard([&] { Get(handle), *num_weights = 0; });
}

int GetDLRWeightName(DLRModelHandle* handle, int index, const char** weight_name) {
  return Guard([&] {
    Get(handle);
    Fail("the model has no named weights (they are linked into its library)");
  });
}

int GetDLRInputName(DLRModelHandle* handle, int index, const char** input_name) {
  return Guard([&] { *input_name = At(Get(handle)->artifact.manifest.inputs, index, "input").name.c_str(); });
}

int GetDLRInputType(DLRModelHandle* handle, int index, const char** input_type) {
  return Guard([&] { *input_type = At(Get(handle)->artifact.manifest.inputs, index, "input").dtype.c_str(); });
}

static size_t InputIndex(Model* model, const char* name) {
  const auto& specs = model->artifact.manifest.inputs;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (name && specs[i].name == name) return i;
  }
  std::string known;
  for (const TensorSpec& s : specs) known += (known.empty() ? "" : ", ") + s.name;
  Fail("unknown input name '" + std::string(name ? name : "(null)") + "'; the model takes " + known);
}

int SetDLRInput(DLRModelHandle* handle, const char* name, const int64_t* shape, const void* input, int dim) {
  return Guard([&] {
    Model* model = Get(handle);
    size_t index = InputIndex(model, name);
    const TensorSpec& spec = model->artifact.manifest.inputs[index];
    bool same = shape && input && dim == static_cast<int>(spec.shape.size());
    for (int i = 0; same && i < dim; ++i) same = shape[i] == spec.shape[static_cast<size_t>(i)];
    if (!same) {
      std::string want, got;
      for (int64_t d : spec.shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
      for (int i = 0; shape && i < dim && i < 9; ++i) got += (i ? ", " : "") + std::to_string(shape[i]);
      Fail("input '" + spec.name + "' must have shape [" + want + "], got [" + got + "]");
    }
    std::memcpy(model->inputs[index]->data, input, spec.elements() * spec.itemsize());
  });
}

int GetDLRInput(DLRModelHandle* handle, const char* name, void* input) {
  return Guard([&] {
    Model* model = Get(handle);
    size_t index = InputIndex(model, name);
    const TensorSpec& spec = model->artifact.manifest.inputs[index];
    std::memcpy(input, model->inputs[index]->data, spec.elements() * spec.itemsize());
  });
}

int GetDLRInputShape(DLRModelHandle* handle, int index, int64_t* shape) {
  return Guard([&] {
    const TensorSpec& spec = At(Get(handle)->artifact.manifest.inputs, index, "input");
    std::copy(spec.shape.begin(), spec.shape.end(), shape);
  });
}

int GetDLRInputSizeDim(DLRModelHandle* handle, int index, int64_t* size, int* dim) {
  return Guard([&] {
    const TensorSpec& spec = At(Get(handle)->artifact.manifest.inputs, index, "input");
    *size = static_cast<int64_t>(spec.elements());
    *dim = static_cast<int>(spec.shape.size());
  });
}

int GetDLRNumOutputs(DLRModelHandle* handle, int* num_outputs) {
  return Guard([&] { *num_outputs = static_cast<int>(Get(handle)->artifact.manifest.outputs.size()); });
}

int GetDLROutputShape(DLRModelHandle* handle, int index, int64_t* shape) {
  return Guard([&] {
    const TensorSpec& spec = Output(Get(handle), index);
    std::copy(spec.shape.begin(), spec.shape.end(), shape);
  });
}

static const tvm::runtime::Tensor& RanOutput(Model* model, int index) {
  Output(model, index);
  if (model->outputs.empty()) Fail("the model has not run yet; call RunDLRModel first");
  return model->outputs[static_cast<size_t>(index)];
}

int GetDLROutput(DLRModelHandle* handle, int index, void* out) {
  return Guard([&] {
    Model* model = Get(handle);
    const tvm::runtime::Tensor& tensor = RanOutput(model, index);
    const TensorSpec& spec = Output(model, index);
    tensor.CopyToBytes(out, spec.elements() * spec.itemsize());
  });
}

int GetDLROutputPtr(DLRModelHandle* handle, int index, const void** out) {
  return Guard([&] { *out = RanOutput(Get(handle), index)->data; });
}

int GetDLROutputSizeDim(DLRModelHandle* handle, int index, int64_t* size, int* dim) {
  return Guard([&] {
    const TensorSpec& spec = Output(Get(handle), index);
    *size = static_cast<int64_t>(spec.elements());
    *dim = static_cast<int>(spec.shape.size());
  });
}

int GetDLROutputType(DLRModelHandle* handle, int index, const char** output_type) {
  return Guard([&] { *output_type = Output(Get(handle), index).dtype.c_str(); });
}

int GetDLROutputName(DLRModelHandle* handle, int index, const char** name) {
  return Guard([&] { *name = Output(Get(handle), index).name.c_str(); });
}

int GetDLROutputIndex(DLRModelHandle* handle, const char* name, int* index) {
  return Guard([&] {
    const auto& specs = Get(handle)->artifact.manifest.outputs;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (name && specs[i].name == name) return void(*index = static_cast<int>(i));
    }
    Fail("unknown output name '" + std::string(name ? name : "(null)") + "'");
  });
}

const char* DLRGetLastError(void) { return last_error.c_str(); }

int GetDLRBackend(DLRModelHandle* handle, const char** name) {
  return Guard([&] { Get(handle), *name = "relax"; });
}

int GetDLRDeviceType(const char* model_path) {
  (void)model_path;
  return kDLCPUCode;
}

int GetDLRVersion(const char** out) {
  return Guard([&] { *out = EDGEKILN_NATIVE_VERSION; });
}

int SetDLRNumThreads(DLRModelHandle* handle, int threads) {
  return Guard([&] {
    Get(handle);
    if (threads < 1) Fail("the number of threads must be at least 1");
    // mode 1 = the big cores first, as TVM's runtime.config_threadpool numbers them.
    ffi::Function::GetGlobalRequired("runtime.config_threadpool")(1, threads);
  });
}

int UseDLRCPUAffinity(DLRModelHandle* handle, int use) {
  return Guard([&] { Get(handle), (void)use; });
}

int EdgekilnGetNumLabels(DLRModelHandle* handle, int* num_labels) {
  return Guard([&] { *num_labels = static_cast<int>(Get(handle)->labels.size()); });
}

int EdgekilnGetLabel(DLRModelHandle* handle, int index, const char** label) {
  return Guard([&] { *label = At(Get(handle)->labels, index, "label").c_str(); });
}

int EdgekilnGetProfile(DLRModelHandle* handle, const char** profile) {
  return Guard([&] { *profile = Get(handle)->artifact.manifest.profile.c_str(); });
}

int EdgekilnVerifyArtifact(const char* model_path) {
  return Guard([&] {
    if (!model_path) Fail("no artifact path given");
    edgekiln::OpenedArtifact opened = edgekiln::OpenArtifact(model_path);
    std::vector<std::string> problems = edgekiln::CompatibilityProblems(opened.manifest);
    if (opened.temporary) edgekiln::RemoveTree(opened.root);
    if (!problems.empty()) Fail("artifact for profile " + opened.manifest.profile + " cannot run here: " + problems[0]);
  });
}

}  // extern "C"
