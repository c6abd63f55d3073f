// edgekiln-run: run an edgekiln artifact on .npy arrays without Python, through the DLR C API.
//
//   edgekiln-run ARTIFACT INPUT.npy [INPUT.npy ...] [--top-k N] [--json] [--outputs DIR]
//
// Prints the top-k classes of the first output, as `edgekiln run` does for .npy inputs
// (the same JSON fields with --json). A model with several inputs takes one INPUT per run
// as comma-separated .npy files, in the model's input order. --outputs DIR also writes
// every output of run k as DIR/k_j.npy (for validation). Exit status 0, or 1 with a
// one-line message.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "edgekiln/dlr.h"
#include "npy.h"

namespace {

struct Args {
  std::string artifact;
  std::vector<std::string> inputs;
  int top_k = 5;
  bool json = false;
  std::string outputs;
};

const char* kUsage =
    "usage: edgekiln-run ARTIFACT INPUT.npy[,INPUT2.npy...] [INPUT.npy ...] [--top-k N] [--json] [--outputs DIR]\n";

Args Parse(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--json") {
      args.json = true;
    } else if (a == "--top-k" && i + 1 < argc) {
      char* end = nullptr;
      long k = std::strtol(argv[++i], &end, 10);
      if (*end || k < 1 || k > 100000) throw std::runtime_error("--top-k must be a number of at least 1");
      args.top_k = static_cast<int>(k);
    } else if (a == "--outputs" && i + 1 < argc) {
      args.outputs = argv[++i];
    } else if (a.rfind("--", 0) == 0) {
      throw std::runtime_error("unknown option " + a + "\n" + kUsage);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2) throw std::runtime_error(std::string("need an artifact and an input\n") + kUsage);
  args.artifact = positional[0];
  args.inputs.assign(positional.begin() + 1, positional.end());
  return args;
}

void Check(int rc) {
  if (rc != 0) throw std::runtime_error(DLRGetLastError());
}

std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

struct Class {
  size_t index;
  std::string label;
  double probability;
};

// The softmax top-k of one logit vector, as runtime/model.py's top_classes computes it.
std::vector<Class> Top(const std::vector<float>& logits, const std::vector<std::string>& labels, int k) {
  double peak = -INFINITY;
  for (float v : logits) peak = std::max(peak, static_cast<double>(v));
  std::vector<double> probs(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += probs[i] = std::exp(static_cast<double>(logits[i]) - peak);
  for (double& p : probs) p /= sum;
  std::vector<size_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probs[a] > probs[b]; });
  std::vector<Class> top;
  for (size_t i = 0; i < order.size() && static_cast<int>(i) < k; ++i) {
    size_t c = order[i];
    top.push_back({c, c < labels.size() ? labels[c] : std::to_string(c), probs[c]});
  }
  return top;
}

struct Result {
  std::string input;
  std::vector<std::pair<std::string, std::vector<int64_t>>> outputs;
  std::vector<Class> top;
};

void SetInputs(DLRModelHandle& model, const std::string& paths) {
  int count = 0;
  Check(GetDLRNumInputs(&model, &count));
  std::vector<std::string> files;
  for (size_t start = 0;;) {
    size_t comma = paths.find(',', start);
    files.push_back(paths.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (static_cast<int>(files.size()) != count) {
    throw std::runtime_error("the model takes " + std::to_string(count) + " input(s), got " +
                             std::to_string(files.size()) + " in " + paths);
  }
  for (int i = 0; i < count; ++i) {
    NpyArray array = ReadNpy(files[static_cast<size_t>(i)]);
    const char *name = nullptr, *dtype = nullptr;
    Check(GetDLRInputName(&model, i, &name));
    Check(GetDLRInputType(&model, i, &dtype));
    std::vector<char> data = ConvertTo(array, dtype);
    Check(SetDLRInput(&model, name, array.shape.data(), data.data(), static_cast<int>(array.shape.size())));
  }
}

Result RunOne(DLRModelHandle& model, const std::string& path, const std::vector<std::string>& labels, int top_k,
              const std::string& save_as) {
  SetInputs(model, path);
  Check(RunDLRModel(&model));
  int outputs = 0;
  Check(GetDLRNumOutputs(&model, &outputs));
  Result result{path, {}, {}};
  for (int i = 0; i < outputs; ++i) {
    int64_t size = 0;
    int dim = 0;
    const char* out_name = nullptr;
    Check(GetDLROutputSizeDim(&model, i, &size, &dim));
    Check(GetDLROutputName(&model, i, &out_name));
    std::vector<int64_t> shape(static_cast<size_t>(dim));
    Check(GetDLROutputShape(&model, i, shape.data()));
    result.outputs.emplace_back(out_name, shape);
    if (!save_as.empty()) {
      const char* out_type = nullptr;
      const void* data = nullptr;
      Check(GetDLROutputType(&model, i, &out_type));
      Check(GetDLROutputPtr(&model, i, &data));
      WriteNpy(save_as + "_" + std::to_string(i) + ".npy", out_type, shape, data);
    }
    if (i == 0) {
      const char* out_type = nullptr;
      Check(GetDLROutputType(&model, 0, &out_type));
      if (std::strcmp(out_type, "float32") != 0) throw std::runtime_error("the first output is not float32");
      std::vector<float> logits(static_cast<size_t>(size));
      Check(GetDLROutput(&model, 0, logits.data()));
      result.top = Top(logits, labels, top_k);
    }
  }
  return result;
}

void PrintJson(const Args& args, const std::string& profile, const std::vector<Result>& results) {
  std::printf("{\n  \"artifact\": %s,\n  \"profile\": %s,\n  \"results\": [", Quote(args.artifact).c_str(),
              Quote(profile).c_str());
  for (size_t r = 0; r < results.size(); ++r) {
    const Result& res = results[r];
    std::printf("%s\n    {\n      \"input\": %s,\n      \"outputs\": [", r ? "," : "", Quote(res.input).c_str());
    for (size_t o = 0; o < res.outputs.size(); ++o) {
      std::string shape;
      for (int64_t d : res.outputs[o].second) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
      std::printf("%s\n        {\"name\": %s, \"shape\": [%s]}", o ? "," : "", Quote(res.outputs[o].first).c_str(),
                  shape.c_str());
    }
    std::printf("\n      ],\n      \"top\": [");
    for (size_t t = 0; t < res.top.size(); ++t) {
      const Class& c = res.top[t];
      std::printf("%s\n        {\"index\": %zu, \"label\": %s, \"probability\": %.17g}", t ? "," : "", c.index,
                  Quote(c.label).c_str(), c.probability);
    }
    std::printf("\n      ]\n    }");
  }
  std::printf("\n  ]\n}\n");
}

}  // namespace

int main(int argc, char** argv) {
  DLRModelHandle model = nullptr;
  try {
    Args args = Parse(argc, argv);
    Check(CreateDLRModel(&model, args.artifact.c_str(), 1, 0));
    int count = 0;
    Check(EdgekilnGetNumLabels(&model, &count));
    std::vector<std::string> labels;
    for (int i = 0; i < count; ++i) {
      const char* label = nullptr;
      Check(EdgekilnGetLabel(&model, i, &label));
      labels.push_back(label);
    }
    std::vector<Result> results;
    for (size_t k = 0; k < args.inputs.size(); ++k) {
      std::string save_as = args.outputs.empty() ? "" : args.outputs + "/" + std::to_string(k);
      results.push_back(RunOne(model, args.inputs[k], labels, args.top_k, save_as));
    }
    const char* profile = nullptr;
    Check(EdgekilnGetProfile(&model, &profile));
    if (args.json) {
      PrintJson(args, profile, results);
    } else {
      for (const Result& res : results) {
        std::printf("%s:\n", res.input.c_str());
        for (size_t i = 0; i < res.top.size(); ++i) {
          std::printf("  %zu. %-32s (class %4zu)  p=%.4f\n", i + 1, res.top[i].label.c_str(), res.top[i].index,
                      res.top[i].probability);
        }
      }
    }
    DeleteDLRModel(&model);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (model) DeleteDLRModel(&model);
    return 1;
  }
}
