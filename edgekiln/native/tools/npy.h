// Reading .npy arrays (format versions 1-3, C order, no pickles), bounded in size.
#ifndef EDGEKILN_TOOLS_NPY_H_
#define EDGEKILN_TOOLS_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

struct NpyArray {
  std::string dtype;  // "float32", "float64", "uint8", ...
  std::vector<int64_t> shape;
  std::vector<char> data;
};

// Throws std::runtime_error with a one-line message when the file is not a plain array.
NpyArray ReadNpy(const std::string& path);

// ``array`` as ``dtype`` (same-kind casts only, as numpy's casting="same_kind" allows
// between floats and from narrower integers); throws when the cast is not allowed.
std::vector<char> ConvertTo(const NpyArray& array, const std::string& dtype);

// Writes ``data`` (C order, little-endian) as a version 1.0 .npy file.
void WriteNpy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape, const void* data);

#endif  // EDGEKILN_TOOLS_NPY_H_
